//! Named network namespaces (`ip netns add/del`) owned by a guard.

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Command;

use crate::util::{run_cmd, unique_name, CmdOutput, CMD_TIMEOUT};

/// A named network namespace, deleted (`ip netns del`) on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
    label: String,
}

impl Netns {
    /// Creates a fresh netns with a unique name (the `role` letter is only
    /// for readability) and brings `lo` up in it.
    pub fn new(label: &str, role: &str) -> Netns {
        let name = unique_name(role);
        let out = crate::util::run(&["ip", "netns", "add", &name]);
        assert!(out.success(), "ip netns add {name}: {out}");
        let ns = Netns {
            name,
            label: label.to_string(),
        };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// Gives a namespace a runtime made (`src`: its nsfs file, e.g. `/proc/PID/ns/net`, or a
    /// runtime's bind mount seen through `/proc/PID/root/...`) a unique name under
    /// /run/netns, so that the probes work in it. Drop removes only that name (`ip netns
    /// del` unmounts it); the namespace lives as long as the runtime keeps it.
    pub fn adopt(src: &std::path::Path, label: &str) -> Netns {
        let name = unique_name("a");
        let dst = PathBuf::from("/run/netns").join(&name);
        std::fs::create_dir_all("/run/netns").expect("mkdir /run/netns");
        std::fs::File::create(&dst).unwrap_or_else(|e| panic!("create {}: {e}", dst.display()));
        let src_s = src.display().to_string();
        let dst_s = dst.display().to_string();
        let out = crate::util::run(&["mount", "--bind", &src_s, &dst_s]);
        if !out.success() {
            let _ = std::fs::remove_file(&dst);
            panic!("mount --bind {src_s} {dst_s}: {out}");
        }
        Netns {
            name,
            label: label.to_string(),
        }
    }

    /// The netns name under /run/netns.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The logical label given by the test (e.g. a container id).
    pub fn label(&self) -> &str {
        &self.label
    }

    /// `/run/netns/NAME`, the path given to CNI as CNI_NETNS.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Runs `argv` inside the netns (`ip netns exec NAME argv...`).
    pub fn exec(&self, argv: &[&str]) -> CmdOutput {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).args(argv);
        run_cmd(cmd, None, CMD_TIMEOUT)
    }

    /// Like [`Netns::exec`] but panics unless it succeeds; returns stdout.
    pub fn exec_ok(&self, argv: &[&str]) -> String {
        let out = self.exec(argv);
        assert!(
            out.success(),
            "in netns {}: {argv:?} failed: {out}",
            self.name
        );
        out.stdout
    }

    /// `ip -n NAME args...` (panics on failure); returns stdout.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut argv = vec!["ip", "-n", &self.name];
        argv.extend_from_slice(args);
        crate::util::run_ok(&argv)
    }

    /// `ip -n NAME args...`, returning the output whatever the exit code.
    pub fn ip_raw(&self, args: &[&str]) -> CmdOutput {
        let mut argv = vec!["ip", "-n", &self.name];
        argv.extend_from_slice(args);
        crate::util::run(&argv)
    }

    /// `ip -j -n NAME args...` parsed as JSON.
    pub fn ip_json(&self, args: &[&str]) -> serde_json::Value {
        let mut argv = vec!["-j"];
        argv.extend_from_slice(args);
        let s = self.ip(&argv);
        if s.trim().is_empty() {
            return serde_json::Value::Array(vec![]);
        }
        serde_json::from_str(&s).unwrap_or_else(|e| panic!("ip -j {args:?}: {e}: {s}"))
    }

    /// Sets a sysctl inside this netns.
    pub fn sysctl(&self, key: &str, value: &str) {
        self.exec_ok(&["sysctl", "-q", "-w", &format!("{key}={value}")]);
    }

    /// Reads a sysctl inside this netns.
    pub fn sysctl_get(&self, key: &str) -> String {
        self.exec_ok(&["sysctl", "-n", key]).trim().to_string()
    }

    /// Runs `nft -f -` with `script` inside this netns (panics on failure).
    pub fn nft_apply(&self, script: &str) {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, "nft", "-f", "-"]);
        let out = run_cmd(cmd, Some(script.as_bytes()), CMD_TIMEOUT);
        assert!(
            out.success(),
            "nft -f in {}: {out}\nscript:\n{script}",
            self.name
        );
    }

    /// `nft list ruleset` inside this netns.
    pub fn nft_list(&self) -> String {
        self.exec_ok(&["nft", "list", "ruleset"])
    }

    /// `nft list table FAMILY NAME`, or `None` if the table does not exist.
    pub fn nft_table(&self, family: &str, table: &str) -> Option<String> {
        let out = self.exec(&["nft", "list", "table", family, table]);
        out.success().then_some(out.stdout)
    }

    /// `ip -d link show`, with the values of running bridge timers
    /// (`gc_timer 12.34`...) masked so that snapshots taken at different
    /// times compare equal when nothing changed.
    pub fn links_detail(&self) -> String {
        mask_timers(&self.ip(&["-d", "link", "show"]))
    }

    /// Snapshot of links, addresses and the whole nft ruleset.
    pub fn snapshot(&self) -> NetSnapshot {
        NetSnapshot {
            links: self.links_detail(),
            // DAD ending clears "tentative" on its own clock; it is no change anyone made.
            addrs: self.ip(&["addr", "show"]).replace(" tentative", ""),
            routes: self.ip(&["route", "show", "table", "all"]),
            nft: self.nft_list(),
        }
    }

    /// Waits up to `timeout` for link `ifname` to be gone (netd removes a DEL's veth pair just
    /// after answering); true if it is gone.
    pub fn wait_link_gone(&self, ifname: &str, timeout: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if !self.has_link(ifname) {
                return true;
            }
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Names of all links in this netns.
    pub fn link_names(&self) -> Vec<String> {
        self.ip_json(&["link", "show"])
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|l| l["ifname"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether a link named `ifname` exists in this netns.
    pub fn has_link(&self, ifname: &str) -> bool {
        self.ip_raw(&["link", "show", "dev", ifname]).success()
    }

    /// IPv4/IPv6 addresses (without prefix) configured on `ifname`.
    pub fn addrs_of(&self, ifname: &str) -> Vec<std::net::IpAddr> {
        let v = self.ip_json(&["addr", "show", "dev", ifname]);
        let mut r = Vec::new();
        for l in v.as_array().into_iter().flatten() {
            for a in l["addr_info"].as_array().into_iter().flatten() {
                if let Some(ip) = a["local"].as_str().and_then(|s| s.parse().ok()) {
                    r.push(ip);
                }
            }
        }
        r
    }

    /// Runs `f` on a dedicated thread that has joined this netns
    /// (`setns(CLONE_NEWNET)`). Sockets created inside `f` belong to this
    /// netns for their whole life, whatever thread uses them later.
    pub fn run_in<T, F>(&self, f: F) -> T
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        let path = self.path();
        std::thread::scope(|s| {
            s.spawn(move || {
                let file = std::fs::File::open(&path)
                    .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
                // SAFETY: plain syscall on a valid fd; affects only this thread.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(
                    rc,
                    0,
                    "setns({}): {}",
                    path.display(),
                    std::io::Error::last_os_error()
                );
                f()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let out = crate::util::run(&["ip", "netns", "del", &self.name]);
        if !out.success() {
            eprintln!("warning: ip netns del {} failed: {out}", self.name);
        }
    }
}

/// Replaces the value following every `*_timer` token by `*`.
pub fn mask_timers(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let indent = line.len() - line.trim_start().len();
        out.push_str(&line[..indent]);
        let mut mask_next = false;
        let mut first = true;
        for tok in line.split_whitespace() {
            if !first {
                out.push(' ');
            }
            first = false;
            if mask_next {
                out.push('*');
                mask_next = false;
            } else {
                out.push_str(tok);
                mask_next = tok.ends_with("_timer");
            }
        }
        out.push('\n');
    }
    out
}

/// Links, addresses, routes and nft ruleset of a netns at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetSnapshot {
    pub links: String,
    pub addrs: String,
    pub routes: String,
    pub nft: String,
}

impl NetSnapshot {
    /// Panics with a readable diff-ish message unless `self == other`.
    pub fn assert_same(&self, other: &NetSnapshot, what: &str) {
        for (field, a, b) in [
            ("links (ip -d link)", &self.links, &other.links),
            ("addresses (ip addr)", &self.addrs, &other.addrs),
            ("routes", &self.routes, &other.routes),
            ("nft ruleset", &self.nft, &other.nft),
        ] {
            assert!(
                a == b,
                "{what}: {field} changed\n--- before ---\n{a}\n--- after ---\n{b}"
            );
        }
    }
}
