//! A private "host" netns running netd, an "external" netns behind a veth
//! pair, container netns, and drivers for netd / netctl / netd-cni.

use std::fs::File;
use std::net::IpAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::netns::Netns;
use crate::util::{bin_in, run_cmd, CmdOutput, TempDir, CMD_TIMEOUT};

/// Host side of the uplink veth (in the host netns).
pub const HOST_UPLINK: &str = "uplink0";
/// External side of the uplink veth (in the external netns).
pub const EXT_IF: &str = "eth0";
pub const HOST_EXT_V4: &str = "192.0.2.1";
pub const EXT_V4: &str = "192.0.2.2";
pub const HOST_EXT_V6: &str = "2001:db8:1::1";
pub const EXT_V6: &str = "2001:db8:1::2";

/// How long to wait for netd to accept connections / to exit.
pub const NETD_START_TIMEOUT: Duration = Duration::from_secs(15);
pub const NETD_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Options of [`World::with`].
#[derive(Debug, Clone)]
pub struct WorldOptions {
    /// net.ipv4.ip_forward inside the host netns.
    pub ip_forward: bool,
    /// net.ipv6.conf.all.forwarding inside the host netns.
    pub ipv6_forward: bool,
    /// Where netd, netctl and netd-cni are (default: [`crate::util::bin_dir`]).
    pub bin_dir: Option<PathBuf>,
}

impl Default for WorldOptions {
    fn default() -> Self {
        WorldOptions {
            ip_forward: true,
            ipv6_forward: true,
            bin_dir: None,
        }
    }
}

/// Result of one netd-cni invocation.
#[derive(Debug, Clone)]
pub struct CniOutput {
    /// Exit code (`None`: killed / timed out).
    pub code: Option<i32>,
    pub stdout: String,
    /// stdout parsed as JSON, when it is JSON.
    pub json: Option<Value>,
    pub stderr: String,
}

impl CniOutput {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
    /// The CNI error code (`{"code": N, "msg": ...}`), if stdout is an error.
    pub fn error_code(&self) -> Option<u64> {
        self.json.as_ref()?.get("code")?.as_u64()
    }
    /// First `ips[].address` without its prefix length, for a result.
    pub fn ip(&self) -> IpAddr {
        self.ips()
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("no ips in CNI result: {self}"))
    }
    /// All `ips[].address` without prefix length.
    pub fn ips(&self) -> Vec<IpAddr> {
        let mut r = Vec::new();
        if let Some(a) = self.json.as_ref().and_then(|j| j["ips"].as_array()) {
            for ip in a {
                let s = ip["address"].as_str().unwrap_or_default();
                let addr = s.split('/').next().unwrap_or_default();
                r.push(
                    addr.parse()
                        .unwrap_or_else(|e| panic!("bad ips[].address {s:?}: {e}")),
                );
            }
        }
        r
    }
    /// First `ips[].gateway`.
    pub fn gateway(&self) -> Option<IpAddr> {
        self.json.as_ref()?["ips"][0]["gateway"]
            .as_str()?
            .parse()
            .ok()
    }
}

impl std::fmt::Display for CniOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit={:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// A private host netns (netd runs here), an external netns and a temp dir.
pub struct World {
    // Field order = drop order after `Drop::drop`: netd is already killed.
    netd: Option<Child>,
    pub host: Netns,
    pub external: Netns,
    dir: TempDir,
    log_path: PathBuf,
    bin_dir: PathBuf,
    /// Replaces `ip netns exec HOST` in front of netd (see [`World::set_netd_launcher`]).
    netd_launcher: Option<Vec<std::ffi::OsString>>,
    /// Extra environment for netd (test knobs, see [`World::set_netd_env`]).
    netd_env: Vec<(String, String)>,
}

impl World {
    /// Host netns with forwarding on, external netns linked to it.
    pub fn new() -> World {
        Self::with(WorldOptions::default())
    }

    pub fn with(opts: WorldOptions) -> World {
        let host = Netns::new("host", "h");
        let external = Netns::new("external", "e");
        host.sysctl(
            "net.ipv4.ip_forward",
            if opts.ip_forward { "1" } else { "0" },
        );
        host.sysctl(
            "net.ipv6.conf.all.forwarding",
            if opts.ipv6_forward { "1" } else { "0" },
        );
        // Created directly inside the host netns: nothing in the root netns.
        host.ip(&[
            "link",
            "add",
            HOST_UPLINK,
            "type",
            "veth",
            "peer",
            "name",
            EXT_IF,
            "netns",
            external.name(),
        ]);
        host.ip(&[
            "addr",
            "add",
            &format!("{HOST_EXT_V4}/24"),
            "dev",
            HOST_UPLINK,
        ]);
        host.ip(&[
            "addr",
            "add",
            &format!("{HOST_EXT_V6}/64"),
            "dev",
            HOST_UPLINK,
            "nodad",
        ]);
        host.ip(&["link", "set", HOST_UPLINK, "up"]);
        external.ip(&["addr", "add", &format!("{EXT_V4}/24"), "dev", EXT_IF]);
        external.ip(&[
            "addr",
            "add",
            &format!("{EXT_V6}/64"),
            "dev",
            EXT_IF,
            "nodad",
        ]);
        external.ip(&["link", "set", EXT_IF, "up"]);
        // The external netns is the host's uplink router.
        host.ip(&["route", "add", "default", "via", EXT_V4]);
        host.ip(&["-6", "route", "add", "default", "via", EXT_V6]);
        let dir = TempDir::new("w");
        for d in ["state", "cni"] {
            std::fs::create_dir_all(dir.path().join(d)).expect("mkdir");
        }
        let log_path = dir.path().join("netd.log");
        World {
            netd: None,
            host,
            external,
            dir,
            log_path,
            bin_dir: opts.bin_dir.unwrap_or_else(crate::util::bin_dir),
            netd_launcher: None,
            netd_env: Vec::new(),
        }
    }

    /// Absolute path of product binary `name`; panics with a hint if missing.
    pub fn bin(&self, name: &str) -> PathBuf {
        bin_in(&self.bin_dir, name)
    }

    /// The temp dir holding the socket, state dir, CNI conf dir and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
    pub fn socket(&self) -> PathBuf {
        self.dir().join("netd.sock")
    }
    pub fn state_dir(&self) -> PathBuf {
        self.dir().join("state")
    }
    pub fn cni_conf_dir(&self) -> PathBuf {
        self.dir().join("cni")
    }

    /// netd's accumulated stdout+stderr (all runs).
    pub fn netd_log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Adds a route in the external netns to `subnet` via the host, as a
    /// router that learned the container subnet would.
    pub fn external_route_via_host(&self, subnet: &str) {
        let via = if subnet.contains(':') {
            HOST_EXT_V6
        } else {
            HOST_EXT_V4
        };
        self.external.ip(&["route", "add", subnet, "via", via]);
    }

    /// A new container netns (lo up). `label` is used as CNI_CONTAINERID.
    pub fn container(&self, label: &str) -> Netns {
        Netns::new(label, "c")
    }

    /// Runs netd (from its next start on) behind `argv` instead of `ip netns exec HOST`: a
    /// runtime test starts it inside the runtime's private mount namespace, because the
    /// daemon opens the CNI_NETNS paths the runtime names, and those exist only there.
    /// `argv` must exec its last argument in the host netns (as `nsenter` does), so that the
    /// child's pid is netd's own.
    pub fn set_netd_launcher(&mut self, argv: Vec<std::ffi::OsString>) {
        self.netd_launcher = Some(argv);
    }

    /// Sets `key=value` in the environment of every netd started from now on (netd's
    /// `NETD_TEST_*` knobs).
    pub fn set_netd_env(&mut self, key: &str, value: &str) {
        self.netd_env.push((key.to_string(), value.to_string()));
    }

    fn netd_command(&self) -> Command {
        let mut cmd = match &self.netd_launcher {
            Some(argv) => {
                let mut c = Command::new(&argv[0]);
                c.args(&argv[1..]);
                c
            }
            None => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", self.host.name()]);
                c
            }
        };
        cmd.arg(self.bin("netd"))
            .arg("--socket")
            .arg(self.socket())
            .arg("--state-dir")
            .arg(self.state_dir())
            .arg("--cni-conf-dir")
            .arg(self.cni_conf_dir())
            .args(["--table", "netd"])
            .envs(self.netd_env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    fn spawn_netd(&mut self) -> Child {
        assert!(self.netd.is_none(), "netd already running");
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open netd log");
        let log2 = log.try_clone().expect("dup log");
        let mut cmd = self.netd_command();
        cmd.stdin(Stdio::null()).stdout(log).stderr(log2);
        // Safety net for a test process killed outright (no Drop runs): the
        // kernel SIGKILLs netd when the spawning thread dies. Survives the
        // exec of `ip netns exec` into netd.
        // SAFETY: prctl is async-signal-safe; nothing else runs in pre_exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        if std::env::var_os("NETD_LOG").is_none() {
            cmd.env("NETD_LOG", "debug");
        }
        cmd.spawn().expect("spawn netd")
    }

    /// Starts netd and waits (bounded) until its socket accepts connections.
    pub fn try_start_netd(&mut self) -> Result<(), String> {
        let mut child = self.spawn_netd();
        let deadline = Instant::now() + NETD_START_TIMEOUT;
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                return Err(format!(
                    "netd exited during startup with {st}\n--- netd log ---\n{}",
                    self.netd_log()
                ));
            }
            if std::os::unix::net::UnixStream::connect(self.socket()).is_ok() {
                self.netd = Some(child);
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "netd did not accept connections on {} within {NETD_START_TIMEOUT:?}\n--- netd log ---\n{}",
                    self.socket().display(),
                    self.netd_log()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts netd; panics (with its log) if it does not come up.
    pub fn start_netd(&mut self) {
        if let Err(e) = self.try_start_netd() {
            panic!("{e}");
        }
    }

    /// Runs netd expecting it to exit by itself within `timeout`. Returns the
    /// exit status (`None` if it had to be killed) and the log of this run.
    pub fn run_netd_expect_exit(&mut self, timeout: Duration) -> (Option<ExitStatus>, String) {
        let before = self.netd_log().len();
        let mut child = self.spawn_netd();
        let deadline = Instant::now() + timeout;
        let st = loop {
            if let Ok(Some(st)) = child.try_wait() {
                break Some(st);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let log = self.netd_log();
        (st, log.get(before..).unwrap_or(&log).to_string())
    }

    /// Whether netd is running (started by us and not exited).
    pub fn netd_running(&mut self) -> bool {
        match self.netd.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// netd's pid, if started.
    pub fn netd_pid(&self) -> Option<u32> {
        self.netd.as_ref().map(Child::id)
    }

    /// Sends `signal` to netd and waits (bounded) for it to exit; SIGKILLs it
    /// after [`NETD_STOP_TIMEOUT`] and panics in that case.
    pub fn stop_netd(&mut self, signal: i32) -> ExitStatus {
        let mut child = self.netd.take().expect("netd not running");
        // `ip netns exec` execs netd, so the child pid is netd itself.
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as libc::pid_t, signal) };
        let deadline = Instant::now() + NETD_STOP_TIMEOUT;
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                return st;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "netd did not exit within {NETD_STOP_TIMEOUT:?} after signal {signal}\n--- netd log ---\n{}",
                    self.netd_log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, expecting a clean exit (status 0).
    pub fn stop_netd_gracefully(&mut self) {
        let st = self.stop_netd(libc::SIGTERM);
        assert!(
            st.success(),
            "netd exited with {st} after SIGTERM\n--- netd log ---\n{}",
            self.netd_log()
        );
    }

    /// `kill -9` netd.
    pub fn kill_netd(&mut self) {
        self.stop_netd(libc::SIGKILL);
    }

    /// Stops netd with `signal` and starts it again.
    pub fn restart_netd(&mut self, signal: i32) {
        self.stop_netd(signal);
        self.start_netd();
    }

    /// `ip netns exec HOST netctl --socket DIR/netd.sock args...`.
    pub fn netctl(&self, args: &[&str]) -> CmdOutput {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.host.name()])
            .arg(self.bin("netctl"))
            .arg("--socket")
            .arg(self.socket())
            .args(args);
        run_cmd(cmd, None, CMD_TIMEOUT)
    }

    /// [`World::netctl`], panicking (with the netd log) unless it succeeds.
    pub fn netctl_ok(&self, args: &[&str]) -> String {
        let out = self.netctl(args);
        assert!(
            out.success(),
            "netctl {args:?} failed: {out}\n--- netd log ---\n{}",
            self.netd_log()
        );
        out.stdout
    }

    /// `netctl --format json args...` parsed.
    pub fn netctl_json(&self, args: &[&str]) -> Value {
        let mut a = vec!["--format", "json"];
        a.extend_from_slice(args);
        let s = self.netctl_ok(&a);
        serde_json::from_str(&s).unwrap_or_else(|e| panic!("netctl {a:?}: not JSON ({e}): {s}"))
    }

    /// Path of the conflist netd wrote for `network`.
    pub fn conflist_path(&self, network: &str) -> PathBuf {
        self.cni_conf_dir().join(format!("netd-{network}.conflist"))
    }

    /// The netd-cni plugin entry of `network`'s conflist, with `name` and
    /// `cniVersion` injected as libcni does.
    pub fn cni_conf(&self, network: &str) -> Value {
        let p = self.conflist_path(network);
        let s = std::fs::read_to_string(&p).unwrap_or_else(|e| {
            panic!(
                "read {}: {e}\n--- netd log ---\n{}",
                p.display(),
                self.netd_log()
            )
        });
        let list: Value =
            serde_json::from_str(&s).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        let plugin = list["plugins"]
            .as_array()
            .and_then(|a| a.iter().find(|p| p["type"] == "netd-cni"))
            .unwrap_or_else(|| panic!("no netd-cni plugin in {}: {s}", p.display()))
            .clone();
        let mut conf = plugin;
        conf["name"] = list["name"].clone();
        conf["cniVersion"] = list["cniVersion"].clone();
        conf
    }

    /// Runs netd-cni like libcni: `cmd` (ADD/DEL/CHECK/VERSION...), the
    /// container's netns path, `ifname`, and the conflist plugin entry of
    /// `network`. `runtime_config` (e.g. `{"portMappings": [...]}`) is set as
    /// `runtimeConfig`; `prev_result` as `prevResult` (needed by CHECK).
    pub fn cni(
        &self,
        cmd: &str,
        container: &Netns,
        ifname: &str,
        network: &str,
        runtime_config: Option<Value>,
    ) -> CniOutput {
        self.cni_with_prev(cmd, container, ifname, network, runtime_config, None)
    }

    pub fn cni_with_prev(
        &self,
        cmd: &str,
        container: &Netns,
        ifname: &str,
        network: &str,
        runtime_config: Option<Value>,
        prev_result: Option<Value>,
    ) -> CniOutput {
        let mut conf = self.cni_conf(network);
        if let Some(rc) = runtime_config {
            conf["runtimeConfig"] = rc;
        }
        if let Some(pr) = prev_result {
            conf["prevResult"] = pr;
        }
        let env = self.cni_env(cmd, container, ifname);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        self.cni_raw(&env, conf.to_string().as_bytes())
    }

    /// Standard CNI environment for `cmd` on `container`.
    pub fn cni_env(&self, cmd: &str, container: &Netns, ifname: &str) -> Vec<(String, String)> {
        vec![
            ("CNI_COMMAND".into(), cmd.into()),
            ("CNI_CONTAINERID".into(), container.label().into()),
            ("CNI_NETNS".into(), container.path().display().to_string()),
            ("CNI_IFNAME".into(), ifname.into()),
            ("CNI_PATH".into(), self.bin_dir.display().to_string()),
        ]
    }

    /// ADD that must succeed; returns the result.
    pub fn cni_add(&self, container: &Netns, network: &str) -> CniOutput {
        let r = self.cni("ADD", container, "eth0", network, None);
        assert!(
            r.success() && r.json.is_some(),
            "CNI ADD of {} to {network} failed: {r}\n--- netd log ---\n{}",
            container.label(),
            self.netd_log()
        );
        r
    }

    /// DEL that must succeed.
    pub fn cni_del(&self, container: &Netns, network: &str) {
        let r = self.cni("DEL", container, "eth0", network, None);
        assert!(
            r.success(),
            "CNI DEL of {} from {network} failed: {r}\n--- netd log ---\n{}",
            container.label(),
            self.netd_log()
        );
    }

    /// Runs netd-cni in the host netns with exactly `env` (plus PATH) and
    /// `stdin`, for bad-input tests.
    pub fn cni_raw(&self, env: &[(&str, &str)], stdin: &[u8]) -> CniOutput {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.host.name()])
            .arg(self.bin("netd-cni"))
            .env_clear()
            .env(
                "PATH",
                std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into()),
            );
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = run_cmd(cmd, Some(stdin), CMD_TIMEOUT);
        let json = serde_json::from_str(&out.stdout).ok();
        CniOutput {
            code: out.code,
            stdout: out.stdout,
            json,
            stderr: out.stderr,
        }
    }

    /// Creates a network with `netctl network create NAME args...`.
    pub fn create_network(&self, name: &str, args: &[&str]) {
        let mut a = vec!["network", "create", name];
        a.extend_from_slice(args);
        self.netctl_ok(&a);
    }

    /// `netctl --format json network inspect NAME`.
    pub fn inspect_network(&self, name: &str) -> Value {
        self.netctl_json(&["network", "inspect", name])
    }

    /// Helper: `json!` re-export convenience for port mappings.
    pub fn port_mappings(maps: &[(u16, u16, &str)]) -> Value {
        json!({
            "portMappings": maps.iter().map(|(h, c, p)| json!({
                "hostPort": h, "containerPort": c, "protocol": p
            })).collect::<Vec<_>>()
        })
    }
}

impl Default for World {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if let Some(mut c) = self.netd.take() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while !matches!(c.try_wait(), Ok(Some(_))) {
                if Instant::now() >= deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        if std::thread::panicking() && !self.netd_log().is_empty() {
            eprintln!(
                "--- netd log ({}) ---\n{}\n--- end of netd log ---",
                self.log_path.display(),
                self.netd_log()
            );
        }
    }
}
