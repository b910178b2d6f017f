//! netd as a system service: the installer's tree (in a temporary DESTDIR, never the real
//! system), the systemd unit (`systemd-analyze verify`), the readiness notification, the
//! configuration file, netctl's table and JSON output against a running netd (golden files in
//! tests/golden/, regenerated with NETD_UPDATE_GOLDEN=1), and `netctl doctor` in a private
//! netns whose ruleset drops forwarded traffic.

use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use netd_netns_tests::util::TempDir;
use netd_netns_tests::world::EXT_V4;
use netd_netns_tests::*;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs scripts/NAME with the built binaries and `env`; panics unless it succeeds.
fn script(name: &str, env: &[(&str, &Path)], args: &[&str]) -> String {
    let mut cmd = Command::new("bash");
    cmd.arg(repo().join("scripts").join(name))
        .args(args)
        .env("NETD_BUILD_DIR", bin_dir())
        .env_remove("PREFIX")
        .env_remove("SYSTEMD_UNIT_DIR")
        .env_remove("CNI_BIN_DIRS");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = util::run_cmd(cmd, None, Duration::from_secs(120));
    assert!(out.success(), "{name} {args:?}: {out}");
    out.stdout
}

/// Every file and symlink under `root`, as absolute paths inside it.
fn tree(root: &Path) -> BTreeSet<String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<String>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                walk(root, &p, out);
            } else {
                out.insert(format!("/{}", p.strip_prefix(root).unwrap().display()));
            }
        }
    }
    let mut out = BTreeSet::new();
    if root.exists() {
        walk(root, root, &mut out);
    }
    out
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

const NETCTL_PAGES: &[&str] = &[
    "netctl",
    "netctl-completion",
    "netctl-doctor",
    "netctl-endpoint",
    "netctl-endpoint-ls",
    "netctl-man",
    "netctl-network",
    "netctl-network-create",
    "netctl-network-inspect",
    "netctl-network-ls",
    "netctl-network-prune",
    "netctl-network-rm",
    "netctl-plan",
    "netctl-status",
];

#[test]
fn install_into_destdir_then_uninstall_and_purge() {
    let tmp = TempDir::new("inst");
    let dest = tmp.path().join("root");
    let d = |p: &str| dest.join(p.trim_start_matches('/'));
    script("install.sh", &[("DESTDIR", &dest)], &[]);

    let mut want: BTreeSet<String> = [
        "/usr/local/bin/netd",
        "/usr/local/bin/netctl",
        "/opt/cni/bin/netd-cni",
        "/usr/lib/cni/netd-cni",
        "/etc/netd/netd.toml",
        "/usr/local/lib/systemd/system/netd.service",
        "/usr/local/share/bash-completion/completions/netctl",
        "/usr/local/share/zsh/site-functions/_netctl",
        "/usr/local/share/fish/vendor_completions.d/netctl.fish",
        "/usr/local/share/man/man8/netd.8",
    ]
    .map(String::from)
    .into();
    for page in NETCTL_PAGES {
        want.insert(format!("/usr/local/share/man/man1/{page}.1"));
    }
    for doc in [
        "guide.md",
        "security.md",
        "isolation.md",
        "kubernetes.md",
        "netd.nft",
    ] {
        want.insert(format!("/usr/local/share/doc/netd/{doc}"));
    }
    assert_eq!(tree(&dest), want, "installed tree");
    assert!(
        d("/etc/cni/net.d").is_dir(),
        "the conflist directory exists"
    );

    for bin in [
        "/usr/local/bin/netd",
        "/usr/local/bin/netctl",
        "/opt/cni/bin/netd-cni",
    ] {
        assert_eq!(mode(&d(bin)), 0o755, "{bin}");
    }
    assert_eq!(mode(&d("/etc/netd/netd.toml")), 0o644);
    assert_eq!(
        std::fs::read(d("/opt/cni/bin/netd-cni")).unwrap(),
        std::fs::read(bin_dir().join("netd-cni")).unwrap()
    );
    assert_eq!(
        std::fs::read_to_string(d("/etc/netd/netd.toml")).unwrap(),
        std::fs::read_to_string(repo().join("netd/netd.toml")).unwrap()
    );
    let unit = std::fs::read_to_string(d("/usr/local/lib/systemd/system/netd.service")).unwrap();
    assert!(
        unit.contains("\nExecStart=/usr/local/bin/netd --config /etc/netd/netd.toml\n"),
        "{unit}"
    );
    assert!(
        !unit.contains("@BINDIR@"),
        "unreplaced placeholder in the unit:\n{unit}"
    );

    // The installed netd reads the installed configuration without complaint.
    let out = util::run_cmd(
        {
            let mut c = Command::new(d("/usr/local/bin/netd"));
            c.arg("--config")
                .arg(d("/etc/netd/netd.toml"))
                .arg("--check-config");
            c
        },
        None,
        Duration::from_secs(10),
    );
    assert!(out.success(), "{out}");

    // A second install keeps the operator's configuration.
    std::fs::write(d("/etc/netd/netd.toml"), "table = \"mine\"\n").unwrap();
    let log = script("install.sh", &[("DESTDIR", &dest)], &[]);
    assert!(
        log.contains("/etc/netd/netd.toml (kept: it exists)"),
        "{log}"
    );
    assert_eq!(
        std::fs::read_to_string(d("/etc/netd/netd.toml")).unwrap(),
        "table = \"mine\"\n"
    );

    // Uninstall leaves configuration and state (and other software's conflists) alone.
    std::fs::write(d("/etc/cni/net.d/netd-web.conflist"), "{}").unwrap();
    std::fs::write(d("/etc/cni/net.d/10-other.conflist"), "{}").unwrap();
    std::fs::create_dir_all(d("/var/lib/netd/networks")).unwrap();
    std::fs::write(d("/var/lib/netd/networks/web.json"), "{}").unwrap();
    script("uninstall.sh", &[("DESTDIR", &dest)], &[]);
    let kept: BTreeSet<String> = [
        "/etc/netd/netd.toml",
        "/etc/cni/net.d/netd-web.conflist",
        "/etc/cni/net.d/10-other.conflist",
        "/var/lib/netd/networks/web.json",
    ]
    .map(String::from)
    .into();
    assert_eq!(tree(&dest), kept, "after uninstall");

    // --purge removes netd's configuration, state and conflists, nothing else.
    script("uninstall.sh", &[("DESTDIR", &dest)], &["--purge"]);
    let other: BTreeSet<String> = ["/etc/cni/net.d/10-other.conflist".to_string()].into();
    assert_eq!(tree(&dest), other, "after uninstall --purge");
}

#[test]
fn install_honours_prefix() {
    let tmp = TempDir::new("pfx");
    let dest = tmp.path().join("root");
    script(
        "install.sh",
        &[("DESTDIR", &dest), ("PREFIX", Path::new("/usr"))],
        &[],
    );
    let t = tree(&dest);
    for p in [
        "/usr/bin/netd",
        "/usr/bin/netctl",
        "/usr/lib/systemd/system/netd.service",
        "/usr/share/man/man1/netctl.1",
        "/opt/cni/bin/netd-cni",
    ] {
        assert!(t.contains(p), "{p} missing: {t:#?}");
    }
    assert!(!t.iter().any(|p| p.starts_with("/usr/local")), "{t:#?}");
    let unit = std::fs::read_to_string(dest.join("usr/lib/systemd/system/netd.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/netd "), "{unit}");
    script(
        "uninstall.sh",
        &[("DESTDIR", &dest), ("PREFIX", Path::new("/usr"))],
        &["--purge"],
    );
    assert_eq!(tree(&dest), BTreeSet::new());
}

#[test]
fn systemd_unit_verifies() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        util::cannot_run(
            "systemd_unit_verifies",
            "systemd-analyze is not installed (apt-get install systemd)",
        );
        return;
    }
    let tmp = TempDir::new("unit");
    let dest = tmp.path().join("root");
    script("install.sh", &[("DESTDIR", &dest)], &[]);
    let unit =
        std::fs::read_to_string(dest.join("usr/local/lib/systemd/system/netd.service")).unwrap();
    for line in [
        "Type=notify",
        "Restart=on-failure",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/netd /run/netd -/etc/cni/net.d",
        "RestrictAddressFamilies=AF_UNIX AF_NETLINK",
        "CapabilityBoundingSet=CAP_NET_ADMIN CAP_CHOWN CAP_SYS_PTRACE",
    ] {
        assert!(
            unit.lines().any(|l| l == line),
            "{line} missing from the unit"
        );
    }
    // verify resolves ExecStart= and the man pages of Documentation= on this machine, so
    // point both into the DESTDIR (the unit itself is unchanged otherwise).
    let dir = tmp.path().join("verify");
    std::fs::create_dir_all(&dir).unwrap();
    let staged = unit.replace(
        "ExecStart=/usr/local/bin/",
        &format!("ExecStart={}/usr/local/bin/", dest.display()),
    );
    let path = dir.join("netd.service");
    std::fs::write(&path, staged).unwrap();
    let mut cmd = Command::new("systemd-analyze");
    cmd.arg("verify");
    if Command::new("man").arg("--version").output().is_ok() {
        cmd.env("MANPATH", dest.join("usr/local/share/man"));
    } else {
        eprintln!("man is not installed: systemd-analyze verify skips the Documentation= pages");
        cmd.arg("--man=no");
    }
    cmd.arg(&path);
    let out = util::run_cmd(cmd, None, Duration::from_secs(60));
    assert!(out.success(), "systemd-analyze verify: {out}");
    assert!(
        !out.stderr.contains("netd.service"),
        "systemd-analyze verify complains: {out}"
    );

    // The hardening actually counts: an exposure rating of at most "OK".
    let mut cmd = Command::new("systemd-analyze");
    cmd.args(["security", "--offline=yes", "--no-pager"])
        .arg(&path);
    let out = util::run_cmd(cmd, None, Duration::from_secs(60));
    match out
        .stdout
        .lines()
        .find_map(|l| l.split("Overall exposure level for netd.service: ").nth(1))
    {
        Some(rest) => {
            let level: f64 = rest.split_whitespace().next().unwrap().parse().unwrap();
            assert!(level <= 4.0, "exposure {level}: {out}");
        }
        None => util::cannot_run(
            "systemd_unit_verifies",
            &format!("systemd-analyze security --offline gave no exposure level: {out}"),
        ),
    }
}

/// A child process killed on drop (for a netd the test spawns itself).
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn ready_notification_comes_after_table_and_socket() {
    let w = World::new();
    let dir = TempDir::new("ntf");
    let notify = dir.path().join("notify.sock");
    let rx = UnixDatagram::bind(&notify).unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let socket = dir.path().join("api.sock");
    let conf = dir.path().join("netd.toml");
    std::fs::write(
        &conf,
        "table = \"svc\"\nsocket_group = \"65534\"\n[pools]\nipv4 = \"10.77.0.0/16\"\nipv4_subnet_size = 28\nipv6_ula_base = \"fd12:3456:789a::/48\"\n",
    )
    .unwrap();
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", w.host.name()])
        .arg(w.bin("netd"))
        .arg("--config")
        .arg(&conf)
        .arg("--socket")
        .arg(&socket)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--cni-conf-dir")
        .arg(dir.path().join("cni"))
        .env("NOTIFY_SOCKET", &notify)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: prctl only, as in the harness: netd dies with this test process.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let netd = Reaped(cmd.spawn().unwrap());

    let mut buf = [0u8; 512];
    let n = rx.recv(&mut buf).expect("READY=1 within 15 s");
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(msg.lines().any(|l| l == "READY=1"), "{msg}");
    assert!(msg.contains("STATUS=table inet svc applied"), "{msg}");
    // At READY=1 both promises hold already: the socket answers and the table is there.
    UnixStream::connect(&socket).expect("the socket accepts connections at READY=1");
    assert!(
        w.host.nft_table("inet", "svc").is_some(),
        "table inet svc exists at READY=1"
    );
    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!(meta.gid(), 65534, "socket_group applied");
    assert_eq!(meta.mode() & 0o777, 0o660);

    // The configuration file's pool is the one used.
    let create = |args: &[&str]| -> Value {
        let out = Command::new("ip")
            .args(["netns", "exec", w.host.name()])
            .arg(w.bin("netctl"))
            .arg("--socket")
            .arg(&socket)
            .args(["--format", "json", "network", "create"])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let net = create(&["n1"]);
    assert_eq!(net["subnet4"], "10.77.0.0/28", "{net}");
    let net = create(&["n6", "--ipv6"]);
    assert_eq!(net["subnet4"], "10.77.0.16/28", "{net}");
    assert_eq!(net["subnet6"], "fd12:3456:789a::/64", "{net}");

    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(netd.0.id() as libc::pid_t, libc::SIGTERM) };
    let n = rx.recv(&mut buf).expect("STOPPING=1 after SIGTERM");
    assert_eq!(&buf[..n], b"STOPPING=1");
}

/// Replaces the values that differ between runs (timestamps, netns paths) in netctl's JSON.
fn normalize(v: &mut Value) {
    match v {
        Value::Object(o) => {
            for (k, x) in o.iter_mut() {
                match k.as_str() {
                    "created" => *x = Value::from(0),
                    "netns" => *x = Value::from("/run/netns/NETNS"),
                    _ => normalize(x),
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(normalize),
        _ => {}
    }
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn golden(name: &str, actual: &str) {
    let path = golden_dir().join(name);
    if std::env::var_os("NETD_UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(golden_dir()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; create it with NETD_UPDATE_GOLDEN=1",
            path.display()
        )
    });
    assert!(
        want == actual,
        "{name} differs from {}\n--- want ---\n{want}\n--- have ---\n{actual}",
        path.display()
    );
}

fn golden_json(name: &str, mut v: Value) {
    normalize(&mut v);
    golden(name, &(serde_json::to_string_pretty(&v).unwrap() + "\n"));
}

#[test]
fn netctl_table_and_json_output() {
    let mut w = World::new();
    w.start_netd();
    w.create_network("web", &["--subnet", "10.89.1.0/24"]);
    w.create_network(
        "db",
        &["--subnet", "10.89.2.0/24", "--internal", "--icc=false"],
    );
    // `network create` says which gateway mode each family got: --routed routes IPv6 only.
    golden(
        "network-create-pub.table",
        &w.netctl_ok(&[
            "network",
            "create",
            "pub",
            "--subnet",
            "10.89.3.0/24",
            "--ipv6",
            "--subnet6",
            "fd00:89:3::/64",
            "--routed",
            "--cni-version",
            "1.1.0",
        ]),
    );
    // Without IPv6 there is nothing for --routed to route: refused, naming the IPv4 option.
    let out = w.netctl(&["network", "create", "r4", "--routed"]);
    assert_eq!(out.code, Some(2), "{out}");
    assert!(
        out.stderr.contains("--gateway-mode-ipv4 routed"),
        "the refusal does not name --gateway-mode-ipv4 routed: {out}"
    );
    let c1 = w.container("c1");
    let r = w.cni(
        "ADD",
        &c1,
        "eth0",
        "web",
        Some(serde_json::json!({"portMappings": [
            {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
            {"hostPort": 5353, "containerPort": 53, "protocol": "udp", "hostIP": "192.0.2.1"}
        ]})),
    );
    assert!(r.success(), "{r}");
    assert_eq!(r.json.as_ref().unwrap()["cniVersion"], "1.0.0", "{r}");
    let c2 = w.container("c2");
    // The network's own version: its conflist says 1.1.0, so the result does too.
    let r = w.cni_add(&c2, "pub");
    assert_eq!(r.json.as_ref().unwrap()["cniVersion"], "1.1.0", "{r}");

    golden("network-ls.table", &w.netctl_ok(&["network", "ls"]));
    golden("endpoint-ls.table", &w.netctl_ok(&["endpoint", "ls"]));
    golden(
        "endpoint-ls-pub.table",
        &w.netctl_ok(&["endpoint", "ls", "--network", "pub"]),
    );
    golden_json("network-ls.json", w.netctl_json(&["network", "ls"]));
    golden_json("network-inspect-pub.json", w.inspect_network("pub"));
    golden_json("endpoint-ls.json", w.netctl_json(&["endpoint", "ls"]));

    let s = w.netctl_json(&["status"]);
    assert_eq!(s["networks"], 3, "{s}");
    assert_eq!(s["endpoints"], 2, "{s}");
    assert_eq!(s["published_ports"], 2, "{s}");
    assert_eq!(s["table"], "netd", "{s}");
    assert!(s["table_elements"].as_u64().unwrap() > 0, "{s}");
    assert_eq!(
        s["cni_conf_dir"],
        w.cni_conf_dir().display().to_string(),
        "{s}"
    );
    let text = w.netctl_ok(&["status"]);
    for want in [
        "version:",
        "uptime:",
        "table:           inet netd (applied, ",
        "endpoints:       2",
    ] {
        assert!(text.contains(want), "{want:?} not in:\n{text}");
    }

    // Errors: exit codes and advice.
    let out = w.netctl(&["endpoint", "ls", "--network", "nosuch"]);
    assert_eq!(out.code, Some(4), "{out}");
    let out = w.netctl(&["network", "rm", "web"]);
    assert_eq!(out.code, Some(5), "{out}");
    assert!(out.stderr.contains("remove those containers"), "{out}");

    // prune removes only the network without endpoints.
    golden("network-prune.table", &w.netctl_ok(&["network", "prune"]));
    assert_eq!(w.netctl_json(&["network", "prune"]), Value::Array(vec![]));
    w.cni_del(&c2, "pub");
    assert_eq!(
        w.netctl_json(&["network", "prune"]),
        serde_json::json!(["pub"])
    );
    w.create_network("tmp", &[]);
    assert_eq!(
        w.netctl_json(&["network", "rm", "tmp"]),
        serde_json::json!(["tmp"])
    );
    let names: Vec<String> = w
        .netctl_json(&["network", "ls"])
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["web"]);
}

fn doctor(w: &World) -> (CmdOutput, Value) {
    let text = w.netctl(&["doctor"]);
    let json = w.netctl(&["--format", "json", "doctor"]);
    assert_eq!(text.code, json.code, "{text}\n{json}");
    let v = serde_json::from_str(&json.stdout).unwrap_or_else(|e| panic!("{e}: {json}"));
    (text, v)
}

fn failed(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .filter(|f| f["status"] == "fail")
        .map(|f| f["detail"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn doctor_names_the_foreign_table_that_drops_container_traffic() {
    let mut w = World::new();
    w.start_netd();
    w.create_network("a", &["--subnet", "10.89.1.0/24"]);
    let c1 = w.container("c1");
    w.cni_add(&c1, "a");
    let ext = EXT_V4.parse().unwrap();
    assert_ping_ok(&c1, ext);

    let (out, v) = doctor(&w);
    assert_eq!(out.code, Some(0), "a healthy host: {out}");
    assert!(failed(&v).is_empty(), "{v:#}");
    for check in [
        "socket",
        "netd",
        "forwarding",
        "br_netfilter",
        "ruleset",
        "rp_filter",
        "conflists",
    ] {
        assert!(
            v.as_array().unwrap().iter().any(|f| f["check"] == check),
            "no {check} check: {v:#}"
        );
    }

    // Docker's classic: iptables-nft FORWARD with policy drop.
    w.host.nft_apply(
        "table ip filter {\n chain FORWARD {\n  type filter hook forward priority filter; policy drop;\n }\n}\n",
    );
    assert_ping_fails(&c1, ext);
    let (out, v) = doctor(&w);
    assert_eq!(out.code, Some(1), "{out}");
    assert!(
        out.stdout.contains("FAIL  ruleset      table ip filter, chain FORWARD (hook forward, priority 0) has policy drop"),
        "{out}"
    );
    assert_eq!(failed(&v).len(), 1, "{v:#}");
    let fix = v
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["status"] == "fail")
        .unwrap()["fix"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        fix.contains("nft insert rule ip filter FORWARD iifname { \"nd-a\" } accept"),
        "{fix}"
    );

    // The fix doctor gives works, and doctor sees that it does.
    w.host.nft_apply(
        "insert rule ip filter FORWARD iifname { \"nd-a\" } accept\ninsert rule ip filter FORWARD oifname { \"nd-a\" } accept\n",
    );
    assert_ping_ok(&c1, ext);
    let (out, _) = doctor(&w);
    assert_eq!(out.code, Some(0), "{out}");

    // An unconditional drop rule in another forward chain is named with its handle.
    w.host.nft_apply(
        "table inet other {\n chain fw_forward {\n  type filter hook forward priority 10; policy accept;\n  counter drop\n }\n}\n",
    );
    let (out, v) = doctor(&w);
    assert_eq!(out.code, Some(1), "{out}");
    let f = failed(&v);
    assert!(
        f.len() == 1 && f[0].contains("table inet other, chain fw_forward, rule handle"),
        "{v:#}"
    );
    w.host.nft_apply("delete table inet other\n");

    // A socket anyone may use, and a conflist of a network netd does not have.
    std::fs::set_permissions(w.socket(), std::fs::Permissions::from_mode(0o666)).unwrap();
    std::fs::write(w.cni_conf_dir().join("netd-ghost.conflist"), "{}").unwrap();
    let (out, v) = doctor(&w);
    assert_eq!(out.code, Some(1), "{out}");
    assert!(
        failed(&v)[0].contains("mode 0666: every local user can change the firewall"),
        "{v:#}"
    );
    assert!(
        out.stdout
            .contains("netd-ghost.conflist is for network ghost"),
        "{out}"
    );
}

#[test]
fn doctor_without_forwarding_or_netd_says_how_to_fix_both() {
    let w = World::with(WorldOptions {
        ip_forward: false,
        ..WorldOptions::default()
    });
    let (out, v) = doctor(&w);
    assert_eq!(out.code, Some(1), "{out}");
    let f = failed(&v);
    assert!(
        f.iter().any(|d| d.contains("net.ipv4.ip_forward = 0")),
        "{v:#}"
    );
    assert!(
        out.stdout.contains("fix: sysctl -w net.ipv4.ip_forward=1"),
        "{out}"
    );
    assert!(out.stdout.contains("FAIL  netd"), "{out}");
}
