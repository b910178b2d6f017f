//! Reliability (issue #6): self-healing of the table, SIGKILL during bursts of ADD/DEL,
//! restart after containers vanished, parallel ADD/DEL, the plugin without its daemon,
//! hostile input on the socket and on plugin stdin, and socket access control.
//!
//! Lines starting with `RELIABILITY` are figures that `scripts/reliability.sh` collects
//! (run with `--nocapture`). `NETD_KILL_ROUNDS` sets the number of SIGKILL rounds (default 3).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use netd_netns_tests::util::{run_cmd, CMD_TIMEOUT};
use netd_netns_tests::world::{EXT_V4, HOST_EXT_V4};
use netd_netns_tests::*;

// ---------------------------------------------------------------------------
// A netd of our own (extra flags), in the World's host netns and directories.
// ---------------------------------------------------------------------------

struct Daemon {
    child: Option<Child>,
    log: PathBuf,
}

fn spawn_netd(w: &World, extra: &[&str]) -> Result<Daemon, String> {
    spawn_netd_at(w, &w.socket(), extra)
}

fn spawn_netd_at(w: &World, socket: &Path, extra: &[&str]) -> Result<Daemon, String> {
    spawn_netd_env(w, socket, extra, &[])
}

fn spawn_netd_env(
    w: &World,
    socket: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Result<Daemon, String> {
    spawn_netd_full(w, socket, extra, env, None)
}

/// Like `spawn_netd_at`, with `group_file` in place of the machine's `/etc/group` for netd
/// alone: netd runs in a mount namespace of its own where that file is bind-mounted over
/// `/etc/group`, so the socket tests can give netd the groups they need without adding any to
/// the machine.
fn spawn_netd_with_groups(
    w: &World,
    socket: &Path,
    extra: &[&str],
    group_file: &Path,
) -> Result<Daemon, String> {
    spawn_netd_full(w, socket, extra, &[], Some(group_file))
}

fn spawn_netd_full(
    w: &World,
    socket: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
    group_file: Option<&Path>,
) -> Result<Daemon, String> {
    let log = w.dir().join("netd-own.log");
    let f = File::options()
        .create(true)
        .append(true)
        .open(&log)
        .expect("open log");
    let f2 = f.try_clone().expect("dup");
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", w.host.name()])
        .arg(w.bin("netd"))
        .arg("--socket")
        .arg(socket)
        .arg("--state-dir")
        .arg(w.state_dir())
        .arg("--cni-conf-dir")
        .arg(w.cni_conf_dir())
        .args(["--table", "netd"])
        .args(extra)
        .env(
            "NETD_LOG",
            std::env::var("NETD_LOG").unwrap_or("info".into()),
        )
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(f)
        .stderr(f2);
    // Made before the fork: the child may not allocate.
    let group_file = group_file.map(|p| {
        use std::os::unix::ffi::OsStrExt;
        std::ffi::CString::new(p.as_os_str().as_bytes()).expect("group file path")
    });
    // SAFETY: prctl, unshare and mount only, in the child before exec, on strings made before
    // the fork.
    unsafe {
        cmd.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            if let Some(src) = &group_file {
                // A mount namespace of the child's own, private from the machine's, so the
                // bind mount below is seen by netd (and `ip netns exec`, which inherits it)
                // and by nothing else.
                if libc::unshare(libc::CLONE_NEWNS) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let root = c"/";
                if libc::mount(
                    std::ptr::null(),
                    root.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                let target = c"/etc/group";
                if libc::mount(
                    src.as_ptr(),
                    target.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("spawn netd");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return Err(format!(
                "netd exited with {st}\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            ));
        }
        if UnixStream::connect(socket).is_ok() {
            return Ok(Daemon {
                child: Some(child),
                log,
            });
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err("netd did not come up".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

impl Daemon {
    fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while !matches!(c.try_wait(), Ok(Some(_))) {
                if Instant::now() > deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        if std::thread::panicking() {
            eprintln!("--- netd log ---\n{}\n--- end ---", self.log());
        }
    }
}

fn nft(ns: &Netns, args: &[&str]) {
    let mut a = vec!["nft"];
    a.extend_from_slice(args);
    ns.exec_ok(&a);
}

fn ports(maps: &[(u16, u16)]) -> Value {
    World::port_mappings(
        &maps
            .iter()
            .map(|(h, c)| (*h, *c, "tcp"))
            .collect::<Vec<_>>(),
    )
}

/// Polls until the table lists exactly as `want`; returns how long that took.
fn wait_for_table(w: &World, want: &str, limit: Duration) -> Option<Duration> {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if w.host.nft_table("inet", "netd").as_deref() == Some(want) {
            return Some(t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    None
}

// ---------------------------------------------------------------------------
// 1. Self-healing
// ---------------------------------------------------------------------------

#[test]
fn table_is_restored_within_a_second_and_foreign_tables_are_left_alone() {
    let w = World::new();
    let d = spawn_netd(&w, &["--check-interval", "1"]).unwrap();
    let (c1, _srv, published) = c1_published_on_a(&w, "10.89.1.0/24");

    // Every change is logged with the peer's credentials (SO_PEERCRED).
    let log = d.log();
    let line = log
        .lines()
        .find(|l| l.contains("change requested") && l.contains("POST /v1/networks"))
        .unwrap_or_else(|| panic!("no change line: {log}"));
    assert!(line.contains("uid=0 gid=0 pid="), "{line}");
    let want = w.host.nft_table("inet", "netd").expect("table");
    let foreign = "table ip foreign {\n\tchain input {\n\t\ttype filter hook input priority 10; policy accept;\n\t\ttcp dport 9999 counter accept\n\t}\n}\n";
    let cases: &[(&str, &[&str], bool)] = &[
        ("nft flush ruleset", &["flush", "ruleset"], false),
        (
            "nft delete table inet netd",
            &["delete", "table", "inet", "netd"],
            true,
        ),
        (
            "nft delete element inet netd dnat4_any { tcp . 8080 }",
            &DELETE_C1_DNAT,
            true,
        ),
        (
            "nft flush chain inet netd forward",
            &["flush", "chain", "inet", "netd", "forward"],
            true,
        ),
        (
            "nft flush set inet netd bridges",
            &["flush", "set", "inet", "netd", "bridges"],
            true,
        ),
    ];
    for (name, args, foreign_survives) in cases {
        w.host.nft_apply(foreign);
        let foreign_before = w.host.nft_table("ip", "foreign").unwrap();
        let t0 = Instant::now();
        nft(&w.host, args);
        let cmd_ms = t0.elapsed();
        let took = wait_for_table(&w, &want, Duration::from_secs(3));
        let took = took.unwrap_or_else(|| {
            panic!(
                "{name}: table not restored within 3 s\n{:?}\n{}",
                w.host.nft_table("inet", "netd"),
                d.log()
            )
        }) + cmd_ms;
        println!(
            "RELIABILITY restore case={:?} ms={:.1}",
            name,
            took.as_secs_f64() * 1e3
        );
        assert!(
            took < Duration::from_secs(1),
            "{name}: restored after {took:?}"
        );
        assert_tcp_ok(&w.external, published);
        // netd never restores or changes a table that is not its own.
        let foreign_after = w.host.nft_table("ip", "foreign");
        if *foreign_survives {
            assert_eq!(foreign_after.as_deref(), Some(&*foreign_before), "{name}");
        } else {
            assert_eq!(
                foreign_after, None,
                "{name}: netd recreated a foreign table"
            );
        }
        let _ = w.host.exec(&["nft", "delete", "table", "ip", "foreign"]);
    }

    // A change to another table, or the operator's user_forward chain, starts no re-sync.
    let restores = |log: &str| log.matches("restored it from state").count();
    let before = restores(&d.log());
    w.host.nft_apply(foreign);
    nft(
        &w.host,
        &[
            "add",
            "rule",
            "inet",
            "netd",
            "user_forward",
            "tcp",
            "dport",
            "7",
            "accept",
        ],
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(restores(&d.log()), before, "{}", d.log());
    assert!(w
        .host
        .nft_table("inet", "netd")
        .unwrap()
        .contains("dport 7 accept"));
    // The periodic check (1 s here) found the table matching the state all along.
    assert!(!d.log().contains("the table differed"), "{}", d.log());
    w.cni_del(&c1, "a");
}

#[test]
fn changes_missed_by_the_monitor_are_caught_by_the_periodic_check() {
    let w = World::new();
    // Test knob: the healer ignores notifications, as if they had all been lost.
    let d = spawn_netd_env(
        &w,
        &w.socket(),
        &["--check-interval", "1"],
        &[("NETD_HEAL_IGNORE_EVENTS", "1")],
    )
    .unwrap();
    w.create_network("a", &["--subnet", "10.89.2.0/24"]);
    let c1 = w.container("c1");
    let r = w.cni("ADD", &c1, "eth0", "a", Some(ports(&[(8080, 80)])));
    assert!(r.success(), "{r}");
    let want = w.host.nft_table("inet", "netd").unwrap();
    for (name, args) in [
        ("delete element", &DELETE_C1_DNAT[..]),
        ("delete table", &["delete", "table", "inet", "netd"][..]),
        (
            "foreign element",
            &[
                "add", "element", "inet", "netd", "bridges", "{", "eth9", "}",
            ][..],
        ),
    ] {
        nft(&w.host, args);
        let took = wait_for_table(&w, &want, Duration::from_secs(4))
            .unwrap_or_else(|| panic!("{name}: not restored by the check\n{}", d.log()));
        println!(
            "RELIABILITY check_restore case={name:?} ms={:.0} (check interval 1 s)",
            took.as_secs_f64() * 1e3
        );
    }
    let log = d.log();
    assert!(log.contains("the table differed from the state"), "{log}");
    assert!(log.contains("set dnat4_any: 1 element(s) missing"), "{log}");

    // Content, not counts: a rule replaced by another (the chain keeps its number of rules)
    // and a base chain's policy changed are both restored by the check alone.
    let srv = TcpServer::start_on_port(&c1, 80);
    let published: SocketAddr = format!("{HOST_EXT_V4}:8080").parse().unwrap();
    assert_tcp_ok(&w.external, published);
    let listing = w
        .host
        .exec_ok(&["nft", "-a", "list", "chain", "inet", "netd", "forward"]);
    let handle = listing
        .lines()
        .find(|l| l.contains("ct state established,related accept"))
        .and_then(|l| l.split("# handle ").nth(1))
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|| panic!("no handle in {listing}"));
    let replace: &[&str] = &[
        "replace",
        "rule",
        "inet",
        "netd",
        "forward",
        "handle",
        &handle,
        "ct",
        "state",
        "established,related",
        "drop",
    ];
    let policy: &[&str] = &[
        "chain", "inet", "netd", "forward", "{", "policy", "drop", ";", "}",
    ];
    let forward_rules = netd::ruleset::rules()
        .iter()
        .filter(|(chain, _, _)| *chain == "forward")
        .count();
    let one_differs = format!("chain forward: 1 of its {forward_rules} rules differ from netd's");
    for (name, args, found) in [
        ("rule replaced", replace, one_differs.as_str()),
        (
            "policy drop",
            policy,
            "chain forward has policy drop, expected accept",
        ),
    ] {
        nft(&w.host, args);
        let changed = w.host.nft_table("inet", "netd").unwrap();
        assert_ne!(changed, want, "{name}: nft changed nothing");
        let took = wait_for_table(&w, &want, Duration::from_secs(4))
            .unwrap_or_else(|| panic!("{name}: not restored by the check\n{}", d.log()));
        println!(
            "RELIABILITY check_restore case={name:?} ms={:.0} (check interval 1 s)",
            took.as_secs_f64() * 1e3
        );
        assert!(d.log().contains(found), "{name}: {}", d.log());
        // Restored for real: the published port answers again.
        assert_tcp_ok(&w.external, published);
    }
    drop(srv);
    w.cni_del(&c1, "a");
}

/// Waits until netd's log holds `n` lines containing `what`.
fn wait_log(d: &Daemon, what: &str, n: usize, limit: Duration) {
    let deadline = Instant::now() + limit;
    while d.log().matches(what).count() < n {
        assert!(
            Instant::now() < deadline,
            "no {n} x {what:?} within {limit:?}\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A DEL or ADD whose element change the kernel refuses (an element deleted or added behind
/// netd's back, and the healer not told) succeeds at once: netd re-applies the whole table in
/// the same call instead of failing until the healer's next check.
#[test]
fn a_refused_element_change_heals_in_the_same_call() {
    let w = World::new();
    // Test knob: the healer ignores notifications; with no periodic check, only the engine
    // itself can put the table right during this test.
    let d = netd_without_periodic_check(&w, &[("NETD_HEAL_IGNORE_EVENTS", "1")]);
    let (c1, srv1, published) = c1_published_on_a(&w, "10.89.3.0/24");

    // 1. Someone deletes c1's DNAT element; the healer does not hear of it.
    nft(&w.host, &DELETE_C1_DNAT);
    std::thread::sleep(Duration::from_millis(500));
    let t = w.host.nft_table("inet", "netd").unwrap();
    assert!(!t.contains("tcp . 8080"), "the healer restored it: {t}");
    // DEL must remove that (missing) element: refused by the kernel, healed in the call.
    let del = w.cni("DEL", &c1, "eth0", "a", None);
    assert!(del.success(), "{del}\n{}", d.log());
    assert_eq!(
        d.log().matches("re-applied the whole table").count(),
        1,
        "{}",
        d.log()
    );
    // ADD of another container on the same port works at once, and traffic reaches it.
    let c2 = w.container("c2");
    let r2 = w.cni("ADD", &c2, "eth0", "a", Some(ports(&[(8080, 80)])));
    assert!(r2.success(), "{r2}\n{}", d.log());
    drop(srv1);
    let srv2 = TcpServer::start_on_port(&c2, 80);
    assert_tcp_ok(&w.external, published);

    // 2. Someone adds the element that the next change adds: network b's bridge.
    nft(
        &w.host,
        &[
            "add", "element", "inet", "netd", "bridges", "{", "nd-b", "}",
        ],
    );
    w.create_network("b", &["--subnet", "10.89.4.0/24"]);
    assert_eq!(
        d.log().matches("re-applied the whole table").count(),
        2,
        "{}",
        d.log()
    );
    let c3 = w.container("c3");
    let r3 = w.cni("ADD", &c3, "eth0", "b", None);
    assert!(r3.success(), "{r3}");
    // The table that the engine re-applied works: c3 reaches the outside (positive) but not
    // c2 on network a (negative), while c2's server still answers through its published port.
    let ext = TcpServer::start(&w.external);
    assert_tcp_ok(&c3, ext.addr(EXT_V4.parse().unwrap()));
    assert_tcp_blocked(&c3, srv2.addr(r2.ip()));
    assert_tcp_ok(&w.external, published);
    // The periodic check never ran meanwhile: the engine did the healing.
    assert!(!d.log().contains("the table differed"), "{}", d.log());
}

/// A netd with its debug log and no periodic check of its table (an hour apart), returned
/// once the checks it makes at start and after the restart grace (11 s) have run, so that
/// none runs during the test: what repairs the table then is what the test is about.
fn netd_without_periodic_check(w: &World, env: &[(&str, &str)]) -> Daemon {
    let mut env = env.to_vec();
    env.push(("NETD_LOG", "debug"));
    let d = spawn_netd_env(w, &w.socket(), &["--check-interval", "3600"], &env).unwrap();
    wait_log(&d, "table matches the state", 2, Duration::from_secs(30));
    d
}

/// Network `a` on `subnet` with container `c1` publishing host port 8080 to its port 80,
/// answering from the external netns; returns c1, its server and the published address.
fn c1_published_on_a(w: &World, subnet: &str) -> (Netns, TcpServer, SocketAddr) {
    w.create_network("a", &["--subnet", subnet]);
    let c1 = w.container("c1");
    let r = w.cni("ADD", &c1, "eth0", "a", Some(ports(&[(8080, 80)])));
    assert!(r.success(), "{r}");
    let srv = TcpServer::start_on_port(&c1, 80);
    let published: SocketAddr = format!("{HOST_EXT_V4}:8080").parse().unwrap();
    assert_tcp_ok(&w.external, published);
    (c1, srv, published)
}

/// The `nft` arguments that delete the DNAT element of host port 8080 (c1's in these tests),
/// as someone else would.
const DELETE_C1_DNAT: [&str; 10] = [
    "delete",
    "element",
    "inet",
    "netd",
    "dnat4_any",
    "{",
    "tcp",
    ".",
    "8080",
    "}",
];

/// Whether any NETLINK_NETFILTER socket in the network namespace of process `pid` listens
/// to nf_tables notifications (group NFNLGRP_NFTABLES = 7, bit 6 of the "Groups" column).
fn nftables_listened_to(pid: i32) -> bool {
    let text = std::fs::read_to_string(format!("/proc/{pid}/net/netlink")).expect("netlink");
    text.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.get(1) == Some(&"12")
            && f.get(3)
                .and_then(|g| u32::from_str_radix(g, 16).ok())
                .is_some_and(|g| g & 0x40 != 0)
    })
}

/// The `events=N` of the healer's "own batch committed" lines: how many notifications it
/// received for each of netd's own batches.
fn own_events(log: &str) -> Vec<usize> {
    log.lines()
        .filter(|l| l.contains("own batch committed"))
        .filter_map(|l| {
            l.split("events=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

/// What the unheard commit relies on, against the real kernel: the ruleset generation moves
/// by one per committed transaction and not for an empty batch (the barrier), a batch at a
/// stale generation is refused as a whole with ERESTART, and one at the current generation
/// is applied.
#[test]
fn the_ruleset_generation_counts_commits_and_guards_a_batch() {
    use netd::nft::{Batch, Family, NftError, Socket};
    let ns = Netns::new("gen", "h");
    let (g0, g1, g2, g3, stale) = ns.run_in(|| {
        let mut sock = Socket::open().expect("socket");
        let table = |name: &str| {
            let mut b = Batch::new(Family::Inet);
            b.add_table(name);
            b
        };
        let g0 = sock.generation().expect("generation");
        sock.barrier().expect("empty batch");
        let g1 = sock.generation().unwrap();
        sock.commit_at(&table("gen_a"), Some(g1))
            .expect("batch at the current generation");
        let g2 = sock.generation().unwrap();
        // At the generation before that commit: refused, nothing applied.
        let stale = sock.commit_at(&table("gen_b"), Some(g1));
        let g3 = sock.generation().unwrap();
        (g0, g1, g2, g3, stale)
    });
    assert_eq!(g1, g0, "an empty batch moved the generation");
    assert_eq!(
        g2,
        netd::ruleset::next_generation(g1),
        "one commit, one generation"
    );
    match stale {
        Err(NftError::Batch { errno, .. }) => assert_eq!(errno, libc::ERESTART),
        other => panic!("a batch at a stale generation was not refused: {other:?}"),
    }
    assert_eq!(g3, g2, "the refused batch moved the generation");
    assert!(ns.nft_table("inet", "gen_a").is_some());
    assert!(
        ns.nft_table("inet", "gen_b").is_none(),
        "the refused batch was applied"
    );
}

/// A large batch (an ADD with 2,000 published ports) is committed while the healer does not
/// listen, so the kernel builds no notification per element; and a change someone else
/// makes inside that window is still healed (the healer checks the table because the
/// ruleset's generation moved by more than netd's own commit).
#[test]
fn a_change_during_an_unheard_large_batch_is_healed() {
    let w = World::new();
    // Test knob: the unheard commit waits 700 ms after the healer stopped listening and
    // 700 ms before it listens again.
    let d = netd_without_periodic_check(&w, &[("NETD_TEST_UNHEARD_PAUSE_MS", "700")]);
    assert!(nftables_listened_to(d.pid()), "the healer does not listen");
    let (_c1, srv, published) = c1_published_on_a(&w, "10.89.5.0/24");

    // Control: a batch below the threshold (20 ports) is heard, element by element.
    let c2 = w.container("c2");
    let small: Vec<(u16, u16)> = (0..20).map(|i| (30000 + i, 80)).collect();
    let r2 = w.cni("ADD", &c2, "eth0", "a", Some(ports(&small)));
    assert!(r2.success(), "{r2}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !own_events(&d.log()).contains(&20) {
        assert!(
            Instant::now() < deadline,
            "20 ports went unheard\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // Someone deletes c1's DNAT element while netd commits c3's 2,000 ports unheard: a
    // thread waits until nobody in the namespace listens, then changes the table, and
    // notes whether the window was still open when the change was made.
    let pid = d.pid();
    let host = w.host.name().to_string();
    let tamper = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        while nftables_listened_to(pid) {
            if Instant::now() > deadline {
                return Err("the healer never stopped listening".to_string());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let out = Command::new("ip")
            .args(["netns", "exec", &host, "nft"])
            .args(DELETE_C1_DNAT)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(!nftables_listened_to(pid))
    });
    let c3 = w.container("c3");
    let big: Vec<(u16, u16)> = (0..2000).map(|i| (20000 + i, 80)).collect();
    let r3 = w.cni("ADD", &c3, "eth0", "a", Some(ports(&big)));
    assert!(r3.success(), "{r3}\n{}", d.log());
    let inside = tamper
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}\n{}", d.log()));
    assert!(
        inside,
        "the change was made after the healer listened again"
    );

    // The healer checks the table and restores c1's element: packets reach c1 again.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !w
        .host
        .nft_table("inet", "netd")
        .unwrap()
        .contains("tcp . 8080 :")
    {
        assert!(Instant::now() < deadline, "not restored\n{}", d.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_tcp_ok(&w.external, published);
    // The restore is a large batch too, so the knob delays its return (and its log line).
    let limit = Duration::from_secs(10);
    wait_log(
        &d,
        "changed while a large batch was applied unheard",
        1,
        limit,
    );
    wait_log(&d, "the table differed from the state", 1, limit);
    // Listening again once both unheard batches are done (c3's, and the restore's, which
    // the healer may have begun before the ADD's answer got here, so it is checked only now).
    assert!(
        nftables_listened_to(pid),
        "the healer does not listen again\n{}",
        d.log()
    );
    let log = d.log();
    // c3's ports are all there, and the healer heard none of them (nor the restore's).
    let table = w.host.nft_table("inet", "netd").unwrap();
    assert_eq!(table.matches("tcp . ").count(), 2021, "{table}");
    let most = own_events(&log).into_iter().max().unwrap_or(0);
    assert!(
        most < 2000,
        "the healer heard {most} notifications for one batch\n{log}"
    );
    let _ = srv.port();
}

/// netd removes only links it made (marked "netd network NAME", of the expected kind): a
/// foreign bridge `nd-foreign` and a foreign veth `vnfoo` survive a restart, the periodic
/// check and `network rm` of a network whose bridge would be named `nd-foreign`, while netd's
/// own leftovers (a veth and a bridge nothing claims after a crash) are removed.
#[test]
fn foreign_links_named_like_netds_survive_restart_check_and_network_rm() {
    let w = World::new();
    let args = ["--check-interval", "1"];
    let env = [("NETD_LOG", "debug")];
    let mut d = spawn_netd_env(&w, &w.socket(), &args, &env).unwrap();
    // Network "foreign" gets no ADD, so netd has not made its bridge nd-foreign yet.
    w.create_network("foreign", &["--subnet", "10.89.5.0/24"]);
    w.create_network("own", &["--subnet", "10.89.6.0/24"]);
    w.create_network("gone", &["--subnet", "10.89.7.0/24"]);
    let c1 = w.container("c1");
    let c2 = w.container("c2");
    let c3 = w.container("c3");
    w.cni_add(&c1, "own");
    w.cni_add(&c2, "own");
    w.cni_add(&c3, "gone");
    w.cni_del(&c3, "gone");
    let veth2 = w
        .netctl_json(&["endpoint", "ls"])
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["container_id"] == c2.label())
        .map(|e| e["host_veth"].as_str().unwrap().to_string())
        .expect("c2's endpoint");
    // Someone else's links, named like netd's.
    w.host.ip(&["link", "add", "nd-foreign", "type", "bridge"]);
    w.host.ip(&[
        "link", "add", "vnfoo", "type", "veth", "peer", "name", "vnfoo-p",
    ]);
    let shows = |name: &str| w.host.link_names().iter().any(|l| l == name);
    assert!(shows("nd-gone") && shows(&veth2));

    // netd dies; state loses c2's endpoint and network "gone" (as if netd had died between
    // releasing them and removing their links), so their veth and bridge are leftovers.
    d.kill();
    let state = w.state_dir();
    fold_journal(&state);
    std::fs::remove_file(state.join(format!("endpoints/own@{}@eth0.json", c2.label()))).unwrap();
    std::fs::remove_file(state.join("networks/gone.json")).unwrap();
    let d = spawn_netd_env(&w, &w.socket(), &args, &env).unwrap();
    // Positive control: the start-up reconciliation removes netd's own leftovers.
    let deadline = Instant::now() + Duration::from_secs(5);
    while (shows("nd-gone") || shows(&veth2)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !shows("nd-gone"),
        "netd's orphan bridge stayed\n{}",
        d.log()
    );
    assert!(!shows(&veth2), "netd's orphan veth stayed\n{}", d.log());
    assert!(!c2.link_names().iter().any(|l| l == "eth0"));
    // Several periodic checks (1 s apart) run, and leave the foreign links alone.
    let checks = d.log().matches("table matches the state").count();
    wait_log(
        &d,
        "table matches the state",
        checks + 3,
        Duration::from_secs(10),
    );
    for name in ["nd-foreign", "vnfoo", "vnfoo-p"] {
        assert!(shows(name), "{name} was removed\n{}", d.log());
    }
    // `network rm foreign` leaves the foreign bridge of that name alone...
    w.netctl_ok(&["network", "rm", "foreign"]);
    assert!(shows("nd-foreign"), "network rm removed a foreign bridge");
    assert!(
        d.log()
            .contains("left the link named like the network's bridge alone"),
        "{}",
        d.log()
    );
    // ...and removes netd's own bridge (positive control), with c1's traffic working until
    // its DEL.
    let ext = TcpServer::start(&w.external);
    assert_tcp_ok(&c1, ext.addr(EXT_V4.parse().unwrap()));
    assert!(shows("nd-own"));
    w.cni_del(&c1, "own");
    w.netctl_ok(&["network", "rm", "own"]);
    assert!(!shows("nd-own"), "netd's bridge survived network rm");
    for name in ["nd-foreign", "vnfoo", "vnfoo-p"] {
        assert!(shows(name), "{name} was removed\n{}", d.log());
    }
}

// ---------------------------------------------------------------------------
// 2. Parallel ADD/DEL; SIGKILL during bursts
// ---------------------------------------------------------------------------

struct Xorshift(u64);
impl Xorshift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Checks netd's state against the kernel and against what the runtime was told.
/// `live`: container label → address of every endpoint whose ADD succeeded (and no DEL).
fn invariants(w: &World, net: &str, live: &BTreeMap<String, IpAddr>, cs: &[Netns]) -> Vec<String> {
    let mut bad = Vec::new();
    let eps = w.netctl_json(&["endpoint", "ls"]);
    let eps: Vec<&Value> = eps
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["network"] == net)
        .collect();
    let mut by_id: BTreeMap<String, &Value> = BTreeMap::new();
    let mut addrs = BTreeSet::new();
    for e in &eps {
        let id = e["container_id"].as_str().unwrap().to_string();
        let a = e["addr4"].as_str().unwrap_or("").to_string();
        if !addrs.insert(a.clone()) {
            bad.push(format!("duplicate address {a}"));
        }
        by_id.insert(id, e);
    }
    for (id, addr) in live {
        match by_id.get(id) {
            None => bad.push(format!("lost endpoint {id} (its ADD succeeded)")),
            Some(e) if e["addr4"].as_str() != Some(&addr.to_string()) => bad.push(format!(
                "{id}: netd says {} but ADD said {addr}",
                e["addr4"]
            )),
            _ => {}
        }
        if let Some(c) = cs.iter().find(|c| c.label() == id) {
            if !c.addrs_of("eth0").contains(addr) {
                bad.push(format!("{id}: eth0 lacks {addr}"));
            }
        }
    }
    for id in by_id.keys() {
        if !live.contains_key(id) {
            bad.push(format!("half-registered endpoint {id}"));
        }
    }
    let veths: BTreeSet<String> = w
        .host
        .link_names()
        .into_iter()
        .filter(|l| l.starts_with("vn"))
        .collect();
    let claimed: BTreeSet<String> = eps
        .iter()
        .map(|e| e["host_veth"].as_str().unwrap().to_string())
        .collect();
    for v in veths.difference(&claimed) {
        bad.push(format!("leaked veth {v}"));
    }
    for v in claimed.difference(&veths) {
        bad.push(format!("endpoint without veth {v}"));
    }
    // Every endpoint publishes one port: the DNAT map holds exactly their addresses.
    let map = w
        .host
        .exec_ok(&["nft", "-j", "list", "map", "inet", "netd", "dnat4_any"]);
    let map: Value = serde_json::from_str(&map).unwrap();
    let mut targets = BTreeSet::new();
    for item in map["nftables"].as_array().unwrap() {
        for el in item["map"]["elem"].as_array().into_iter().flatten() {
            let to = el[1]["concat"][0].as_str().unwrap_or("?").to_string();
            targets.insert(to);
        }
    }
    if targets != addrs {
        bad.push(format!(
            "dnat4_any targets {targets:?} differ from endpoint addresses {addrs:?}"
        ));
    }
    bad
}

/// Runs `jobs` (ADD or DEL of container index) on `threads` threads; returns the outcomes.
fn burst(
    w: &World,
    net: &str,
    cs: &[Netns],
    jobs: Vec<(&'static str, usize)>,
    threads: usize,
    during: impl FnOnce() + Send,
) -> Vec<(&'static str, usize, CniOutput)> {
    let queue = Mutex::new(jobs);
    let out = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let Some((cmd, i)) = queue.lock().unwrap().pop() else {
                    break;
                };
                let rc = ports(&[(20000 + i as u16, 80)]);
                let r = w.cni(cmd, &cs[i], "eth0", net, Some(rc));
                out.lock().unwrap().push((cmd, i, r));
            });
        }
        s.spawn(during);
    });
    out.into_inner().unwrap()
}

#[test]
fn hundred_parallel_adds_then_dels_get_unique_addresses_and_traffic() {
    let mut w = World::new();
    w.start_netd();
    w.create_network("p", &["--subnet", "10.89.3.0/24"]);
    let cs: Vec<Netns> = (0..100).map(|i| w.container(&format!("p{i}"))).collect();
    let t0 = Instant::now();
    let res = burst(
        &w,
        "p",
        &cs,
        (0..100).map(|i| ("ADD", i)).collect(),
        100,
        || {},
    );
    println!(
        "RELIABILITY parallel_add n=100 ms={:.0}",
        t0.elapsed().as_secs_f64() * 1e3
    );
    let mut live = BTreeMap::new();
    for (_, i, r) in &res {
        assert!(r.success(), "ADD p{i}: {r}\n{}", w.netd_log());
        live.insert(cs[*i].label().to_string(), r.ip());
    }
    let unique: BTreeSet<_> = live.values().collect();
    assert_eq!(unique.len(), 100, "addresses are not unique");
    assert_eq!(invariants(&w, "p", &live, &cs), Vec::<String>::new());
    // Traffic: every container reaches a server in p0, and from outside its published port.
    let srv = TcpServer::start_on_port(&cs[0], 80);
    for (i, c) in cs.iter().enumerate().skip(1) {
        assert_eq!(assert_tcp_ok(c, srv.addr(live["p0"])).ip(), live[c.label()]);
        if i % 25 == 0 {
            let srv_i = TcpServer::start_on_port(c, 80);
            let to: SocketAddr = format!("{HOST_EXT_V4}:{}", 20000 + i).parse().unwrap();
            assert_tcp_ok(&w.external, to);
            drop(srv_i);
        }
    }
    drop(srv);
    let t0 = Instant::now();
    let res = burst(
        &w,
        "p",
        &cs,
        (0..100).map(|i| ("DEL", i)).collect(),
        100,
        || {},
    );
    println!(
        "RELIABILITY parallel_del n=100 ms={:.0}",
        t0.elapsed().as_secs_f64() * 1e3
    );
    for (_, i, r) in &res {
        assert!(r.success(), "DEL p{i}: {r}");
    }
    // netd removes the veth pairs after answering each DEL, one at a time (~20 ms each in the
    // kernel): give it time, then every invariant must hold.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut bad = invariants(&w, "p", &BTreeMap::new(), &cs);
    while bad.iter().all(|b| b.starts_with("leaked veth"))
        && !bad.is_empty()
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(200));
        bad = invariants(&w, "p", &BTreeMap::new(), &cs);
    }
    assert_eq!(bad, Vec::<String>::new());
    w.stop_netd_gracefully();
}

#[test]
fn sigkill_during_parallel_add_del_loses_nothing_and_leaks_nothing() {
    let rounds: usize = std::env::var("NETD_KILL_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let seed = std::env::var("NETD_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    println!("RELIABILITY kill seed={seed}");
    let mut rng = Xorshift(seed);
    let w = World::new();
    let mut d = spawn_netd(&w, &[]).unwrap();
    w.create_network("k", &["--subnet", "10.89.4.0/24"]);
    let n = 100;
    let cs: Vec<Netns> = (0..n).map(|i| w.container(&format!("k{i}"))).collect();
    let mut live: BTreeMap<String, IpAddr> = BTreeMap::new();
    let (mut total_lost, mut total_leaks, mut total_acked) = (0, 0, 0);
    for round in 0..rounds {
        // Half of the absent containers are added, a third of the present ones removed.
        let mut jobs = Vec::new();
        for (i, c) in cs.iter().enumerate() {
            let r = rng.below(6);
            if live.contains_key(c.label()) {
                if r < 2 {
                    jobs.push(("DEL", i));
                }
            } else if r < 3 {
                jobs.push(("ADD", i));
            }
        }
        let delay = Duration::from_millis(10 + rng.below(600));
        let pid = d.pid();
        let t0 = Instant::now();
        let res = burst(&w, "k", &cs, jobs.clone(), 32, move || {
            std::thread::sleep(delay);
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        });
        d.kill();
        let burst_ms = t0.elapsed().as_millis();
        let (mut ok, mut failed) = (0, 0);
        let mut redo = Vec::new();
        for (cmd, i, r) in &res {
            let label = cs[*i].label().to_string();
            match (*cmd, r.success()) {
                ("ADD", true) => {
                    live.insert(label, r.ip());
                    ok += 1;
                    total_acked += 1;
                }
                ("DEL", true) => {
                    live.remove(&label);
                    ok += 1;
                }
                // A runtime calls DEL after a failed ADD, and retries a failed DEL.
                (_, false) => {
                    redo.push(*i);
                    if *cmd == "DEL" {
                        live.remove(&label);
                    }
                    failed += 1;
                }
                _ => unreachable!(),
            }
        }
        d = spawn_netd(&w, &[]).unwrap();
        for i in redo {
            let r = w.cni(
                "DEL",
                &cs[i],
                "eth0",
                "k",
                Some(ports(&[(20000 + i as u16, 80)])),
            );
            assert!(r.success(), "DEL after restart: {r}");
        }
        // A DEL that found netd down removed the links and succeeded; netd releases such
        // endpoints once the restart grace has passed (RESTART_GRACE_SECS). Wait for that.
        let restarted = Instant::now();
        let mut bad = invariants(&w, "k", &live, &cs);
        let first = bad.clone();
        // (The DNAT map is read apart from the endpoint list, so it may differ while netd is
        // releasing.)
        // (A veth of a DEL netd has answered is removed by netd shortly after.)
        let later = |b: &String| {
            b.starts_with("half-registered")
                || b.starts_with("endpoint without veth")
                || b.starts_with("dnat4_any targets")
                || b.starts_with("leaked veth")
        };
        while !bad.is_empty()
            && bad.iter().all(later)
            && restarted.elapsed() < Duration::from_secs(25)
        {
            std::thread::sleep(Duration::from_millis(500));
            bad = invariants(&w, "k", &live, &cs);
        }
        let lost = first.iter().filter(|b| b.starts_with("lost")).count();
        total_lost += lost;
        total_leaks += bad.len();
        let pending = first
            .iter()
            .filter(|b| b.starts_with("half-registered"))
            .count();
        println!(
            "RELIABILITY kill round={round} jobs={} kill_after_ms={} burst_ms={} ok={ok} failed={failed} live={} lost={lost} released_later={pending} converged_ms={} leaks={}",
            jobs.len(),
            delay.as_millis(),
            burst_ms,
            live.len(),
            restarted.elapsed().as_millis(),
            bad.len()
        );
        assert!(
            lost == 0 && bad.is_empty(),
            "round {round} (seed {seed}): {first:#?} then {bad:#?}\n{}",
            d.log()
        );
    }
    println!(
        "RELIABILITY kill summary rounds={rounds} acked_adds={total_acked} lost={total_lost} leaks={total_leaks}"
    );
    // Traffic works for what is left.
    if let Some((id, addr)) = live.iter().next() {
        let c = cs.iter().find(|c| c.label() == id).unwrap();
        let i: u16 = id[1..].parse().unwrap();
        let _srv = TcpServer::start_on_port(c, 80);
        let to: SocketAddr = format!("{HOST_EXT_V4}:{}", 20000 + i).parse().unwrap();
        assert_tcp_ok(&w.external, to);
        let _ = addr;
    }
}

// ---------------------------------------------------------------------------
// 3. Restart after containers vanished; the plugin without its daemon
// ---------------------------------------------------------------------------

/// Folds netd's journal into the per-object state files, as netd's next start would do
/// first, so that a test can edit those files while netd is stopped.
fn fold_journal(state: &Path) {
    netd::store::Store::open(state)
        .and_then(|mut s| s.compact_now())
        .unwrap_or_else(|e| panic!("folding the journal of {}: {e}", state.display()));
}

/// Moves an endpoint's creation time back, as if it had been made long ago.
fn age_endpoint(w: &World, net: &str, cid: &str) {
    fold_journal(&w.state_dir());
    let p = w
        .state_dir()
        .join(format!("endpoints/{net}@{cid}@eth0.json"));
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let mut v: Value = serde_json::from_str(&text).unwrap();
    v["created"] = json!(1);
    std::fs::write(&p, v.to_string()).unwrap();
}

#[test]
fn plugin_without_daemon_and_restart_after_netns_deleted() {
    let mut w = World::new();
    w.start_netd();
    // 1.1.0: the conflist version that allows STATUS (checked below).
    w.create_network("r", &["--subnet", "10.89.5.0/24", "--cni-version", "1.1.0"]);
    let gone1 = w.container("gone1");
    let gone2 = w.container("gone2");
    let deld = w.container("deld");
    let keep = w.container("keep");
    let mut want_keep = BTreeMap::new();
    for (i, c) in [&gone1, &gone2, &deld, &keep].into_iter().enumerate() {
        let r = w.cni(
            "ADD",
            c,
            "eth0",
            "r",
            Some(ports(&[(20000 + i as u16, 80)])),
        );
        assert!(r.success(), "{r}");
        if c.label() == "keep" {
            want_keep.insert("keep".to_string(), r.ip());
        }
    }
    w.kill_netd();

    // ADD without netd: code 11 naming the socket, nothing left behind.
    let fresh = w.container("fresh");
    let before = (w.host.link_names(), fresh.link_names());
    let r = w.cni("ADD", &fresh, "eth0", "r", None);
    assert_eq!(r.error_code(), Some(11), "{r}");
    let msg = r.json.as_ref().unwrap().to_string();
    assert!(
        msg.contains(&w.socket().display().to_string()),
        "message does not name the socket: {msg}"
    );
    assert_eq!((w.host.link_names(), fresh.link_names()), before);
    // STATUS: 50. STATUS exists from CNI 1.1.0 on; netd's conflists declare 1.0.0 (for
    // libcni before 1.2), so a runtime that calls STATUS sends a 1.1.0 config.
    let mut conf = w.cni_conf("r");
    conf["cniVersion"] = json!("1.1.0");
    let env = w.cni_env("STATUS", &fresh, "eth0");
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let r = w.cni_raw(&env, conf.to_string().as_bytes());
    assert_eq!(r.error_code(), Some(50), "{r}");
    // DEL without netd removes the links it can and succeeds.
    let r = w.cni("DEL", &deld, "eth0", "r", None);
    assert!(r.success(), "{r}");
    assert!(!deld.has_link("eth0"));
    age_endpoint(&w, "r", "deld");
    // Two containers disappear while netd is down.
    drop(gone1);
    drop(gone2);

    w.start_netd();
    let bad = invariants(&w, "r", &want_keep, std::slice::from_ref(&keep));
    assert!(bad.is_empty(), "{bad:#?}\n{}", w.netd_log());
    assert!(w
        .netd_log()
        .contains("released: its container netns or host veth is gone"));
    w.cni_del(&keep, "r");
}

// ---------------------------------------------------------------------------
// 4. Hostile input: the plugin and the socket
// ---------------------------------------------------------------------------

/// Everything a bad request must leave as it was.
fn everything(w: &World) -> (String, String, String, String) {
    (
        w.netctl_ok(&["--format", "json", "endpoint", "ls"]),
        w.netctl_ok(&["--format", "json", "network", "ls"]),
        w.host.nft_table("inet", "netd").unwrap_or_default(),
        w.host.links_detail(),
    )
}

/// (case, environment, stdin, expected CNI error code)
type BadCni = (&'static str, Vec<(String, String)>, Vec<u8>, u64);

#[test]
fn bad_plugin_input_gets_exact_codes_and_changes_nothing() {
    let mut w = World::new();
    w.start_netd();
    w.create_network("a", &["--subnet", "10.89.6.0/24"]);
    w.create_network("inner", &["--subnet", "10.89.16.0/24", "--internal"]);
    let c0 = w.container("c0");
    // c0 holds host port 8080, for the conflict case.
    let r0 = w.cni("ADD", &c0, "eth0", "a", Some(ports(&[(8080, 80)])));
    assert!(r0.success(), "{r0}");
    let c = w.container("bad");
    let conf = w.cni_conf("a");
    let inner = w.cni_conf("inner");
    let env = w.cni_env("ADD", &c, "eth0");
    let with = |k: &str, v: &str| -> Vec<(String, String)> {
        env.iter()
            .map(|(a, b)| {
                if a == k {
                    (a.clone(), v.to_string())
                } else {
                    (a.clone(), b.clone())
                }
            })
            .collect()
    };
    let conf_with = |f: &dyn Fn(&mut Value)| {
        let mut v = conf.clone();
        f(&mut v);
        v.to_string().into_bytes()
    };
    let notns = w.dir().join("not-a-netns");
    std::fs::write(&notns, b"x").unwrap();
    let good = conf.to_string().into_bytes();
    let mut huge =
        b"{\"cniVersion\":\"1.1.0\",\"name\":\"a\",\"type\":\"netd-cni\",\"x\":\"".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 9 << 20));
    huge.extend(b"\"}");
    let cases: Vec<BadCni> = vec![
        (
            "malformed JSON",
            env.clone(),
            b"{\"cniVersion\":".to_vec(),
            6,
        ),
        ("huge stdin", env.clone(), huge, 6),
        (
            "unknown field",
            env.clone(),
            conf_with(&|v| v["colour"] = json!("red")),
            2,
        ),
        (
            "ifname over 15 bytes",
            with("CNI_IFNAME", "eth0123456789012"),
            good.clone(),
            4,
        ),
        (
            "ifname with /",
            with("CNI_IFNAME", "et/h0"),
            good.clone(),
            4,
        ),
        (
            "ifname with :",
            with("CNI_IFNAME", "eth:0"),
            good.clone(),
            4,
        ),
        (
            "ifname with space",
            with("CNI_IFNAME", "eth 0"),
            good.clone(),
            4,
        ),
        (
            "container ID with /",
            with("CNI_CONTAINERID", "../etc"),
            good.clone(),
            4,
        ),
        (
            "netns not a netns",
            with("CNI_NETNS", &notns.display().to_string()),
            good.clone(),
            4,
        ),
        (
            "unknown network",
            env.clone(),
            conf_with(&|v| v["network"] = json!("nosuch")),
            7,
        ),
        (
            "host port out of range",
            env.clone(),
            conf_with(
                &|v| v["runtimeConfig"] = json!({"portMappings": [{"hostPort": 70000, "containerPort": 80, "protocol": "tcp"}]}),
            ),
            7,
        ),
        (
            "host port 0",
            env.clone(),
            conf_with(&|v| {
                v["runtimeConfig"] = json!({"portMappings": [{"hostPort": 0, "containerPort": 80, "protocol": "tcp"}]})
            }),
            7,
        ),
        (
            "IPv6 host address on an IPv4-only network",
            env.clone(),
            conf_with(
                &|v| v["runtimeConfig"] = json!({"portMappings": [{"hostPort": 8081, "containerPort": 80, "protocol": "tcp", "hostIP": "2001:db8::1"}]}),
            ),
            7,
        ),
        (
            "mapping on an internal network",
            env.clone(),
            {
                let mut v = inner.clone();
                v["runtimeConfig"] = json!({"portMappings": [{"hostPort": 8082, "containerPort": 80, "protocol": "tcp"}]});
                v.to_string().into_bytes()
            },
            7,
        ),
        (
            "host port another container holds",
            env.clone(),
            conf_with(
                &|v| v["runtimeConfig"] = json!({"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]}),
            ),
            100,
        ),
    ];
    let mut failures = Vec::new();
    for (name, env, stdin, code) in cases {
        let before = everything(&w);
        let before_c = c.link_names();
        let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let r = w.cni_raw(&pairs, &stdin);
        let got = r.error_code();
        if got != Some(code) || r.success() {
            failures.push(format!(
                "{name}: want code {code}, got {got:?}: {}",
                r.stdout
            ));
        }
        if everything(&w) != before || c.link_names() != before_c {
            failures.push(format!("{name}: something changed"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// One raw request on the socket; returns (status, body).
fn raw(sock: &Path, req: &[u8]) -> (u16, String) {
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let _ = s.write_all(req);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

fn post(path: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "POST {path} HTTP/1.1\r\nHost: netd\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

#[test]
fn bad_api_requests_get_exact_statuses_and_change_nothing() {
    let mut w = World::new();
    w.start_netd();
    w.create_network("a", &["--subnet", "10.89.7.0/24"]);
    w.create_network("inner", &["--subnet", "10.89.17.0/24", "--internal"]);
    let c0 = w.container("c0");
    // c0 holds host port 8080, for the conflict case.
    let r0 = w.cni("ADD", &c0, "eth0", "a", Some(ports(&[(8080, 80)])));
    assert!(r0.success(), "{r0}");
    let sock = w.socket();
    let attach = |f: &dyn Fn(&mut Value)| {
        let mut v = json!({"network": "a", "container_id": "x1", "ifname": "eth0",
                           "netns": c0.path(), "port_mappings": []});
        f(&mut v);
        post("/v1/endpoints", v.to_string().as_bytes())
    };
    let mut huge = post("/v1/networks", b"");
    huge.truncate(huge.len() - 4);
    let huge = [
        String::from_utf8(huge)
            .unwrap()
            .replace("Content-Length: 0", "Content-Length: 99999999")
            .into_bytes(),
        b"\r\n\r\n{".to_vec(),
    ]
    .concat();
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("malformed JSON", post("/v1/networks", b"{\"name\": "), 400),
        ("not HTTP", b"\x00\x01\x02garbage\r\n\r\n".to_vec(), 400),
        ("huge body", huge, 400),
        (
            "huge head",
            [
                b"GET /v1/status HTTP/1.1\r\nX: ".to_vec(),
                vec![b'a'; 20000],
                b"\r\n\r\n".to_vec(),
            ]
            .concat(),
            400,
        ),
        (
            "unknown field",
            post(
                "/v1/networks",
                br#"{"name":"b","subnet":"10.89.8.0/24","colour":"red"}"#,
            ),
            400,
        ),
        (
            "overlapping subnet",
            post("/v1/networks", br#"{"name":"b","subnet":"10.89.7.128/25"}"#),
            409,
        ),
        (
            "bad network name",
            post("/v1/networks", br#"{"name":"../b"}"#),
            400,
        ),
        (
            "bridge name over 15 bytes",
            post(
                "/v1/networks",
                br#"{"name":"b","bridge":"abcdefghijklmnop"}"#,
            ),
            400,
        ),
        (
            "bridge name with /",
            post("/v1/networks", br#"{"name":"b","bridge":"br/0"}"#),
            400,
        ),
        (
            "port out of range",
            attach(&|v| {
                v["port_mappings"] =
                    json!([{"host_port": 70000, "container_port": 80, "protocol": "tcp"}])
            }),
            400,
        ),
        (
            "port 0",
            attach(&|v| {
                v["port_mappings"] =
                    json!([{"host_port": 0, "container_port": 80, "protocol": "tcp"}])
            }),
            400,
        ),
        (
            "IPv6 host address on an IPv4-only network",
            attach(&|v| {
                v["port_mappings"] = json!([{"host_port": 8081, "container_port": 80,
                                             "protocol": "tcp", "host_ip": "2001:db8::1"}])
            }),
            400,
        ),
        (
            "one binding twice",
            attach(&|v| {
                v["port_mappings"] = json!([
                    {"host_port": 8083, "container_port": 80, "protocol": "tcp"},
                    {"host_port": 8083, "container_port": 81, "protocol": "tcp"}])
            }),
            400,
        ),
        (
            "mapping on an internal network",
            attach(&|v| {
                v["network"] = json!("inner");
                v["port_mappings"] =
                    json!([{"host_port": 8082, "container_port": 80, "protocol": "tcp"}])
            }),
            400,
        ),
        (
            "host port another container holds",
            attach(&|v| {
                v["port_mappings"] =
                    json!([{"host_port": 8080, "container_port": 80, "protocol": "tcp"}])
            }),
            409,
        ),
        (
            "ifname over 15 bytes",
            attach(&|v| v["ifname"] = json!("eth0123456789012")),
            400,
        ),
        (
            "ifname with :",
            attach(&|v| v["ifname"] = json!("eth:0")),
            400,
        ),
        (
            "ifname with space",
            attach(&|v| v["ifname"] = json!("eth 0")),
            400,
        ),
        (
            "container ID with /",
            attach(&|v| v["container_id"] = json!("a/b")),
            400,
        ),
        ("relative netns", attach(&|v| v["netns"] = json!("x1")), 400),
        (
            "netns not a netns",
            attach(&|v| v["netns"] = json!("/proc/self/status")),
            400,
        ),
        (
            "unknown network",
            attach(&|v| v["network"] = json!("nosuch")),
            404,
        ),
        ("unknown path", b"GET /v2/x HTTP/1.1\r\n\r\n".to_vec(), 404),
        (
            "chunked",
            b"POST /v1/networks HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(),
            400,
        ),
    ];
    let mut failures = Vec::new();
    for (name, req, want) in cases {
        let before = everything(&w);
        let (status, body) = raw(&sock, &req);
        if status != want {
            failures.push(format!("{name}: want {want}, got {status}: {body}"));
        } else if !body.contains("\"error\"") {
            failures.push(format!("{name}: no error body: {body}"));
        }
        if everything(&w) != before {
            failures.push(format!("{name}: something changed"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}\n{}", w.netd_log());
    // The template itself is a good request: each case failed for its own reason.
    let (status, body) = raw(&sock, &attach(&|_| {}));
    assert_eq!(status, 201, "{body}");
}

#[test]
fn slow_and_stuck_clients_do_not_block_others() {
    let mut w = World::new();
    w.start_netd();
    let sock = w.socket();
    // Ten clients that send half a request and then nothing.
    let stuck: Vec<UnixStream> = (0..10)
        .map(|_| {
            let mut s = UnixStream::connect(&sock).unwrap();
            s.write_all(b"POST /v1/networks HTTP/1.1\r\nContent-Length: 100\r\n\r\n{")
                .unwrap();
            s
        })
        .collect();
    // One that never sends anything at all.
    let idle = UnixStream::connect(&sock).unwrap();
    let t0 = Instant::now();
    for _ in 0..5 {
        w.netctl_ok(&["status"]);
    }
    w.create_network("a", &["--subnet", "10.89.9.0/24"]);
    let took = t0.elapsed();
    println!(
        "RELIABILITY stuck_clients=11 six_requests_ms={:.0}",
        took.as_secs_f64() * 1e3
    );
    assert!(took < Duration::from_secs(3), "others waited {took:?}");
    // The stuck ones are cut off after the read timeout with 408.
    let mut s = stuck.into_iter().next().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 408"), "{out}");
    drop(idle);
}

// ---------------------------------------------------------------------------
// 5. Socket access
// ---------------------------------------------------------------------------

/// A copy of the machine's `/etc/group` in the test's directory, without any group named
/// `name`, plus `name` with a gid that no group in the machine's file has. For
/// `spawn_netd_with_groups`; clients are then given the gid by number (`setpriv`), which needs
/// no name lookup. Returns the file and the gid.
fn group_file_with(w: &World, name: &str) -> (PathBuf, u32) {
    let system = std::fs::read_to_string("/etc/group").expect("reading /etc/group");
    let mut used = BTreeSet::new();
    let mut out = String::new();
    for line in system.lines() {
        let mut fields = line.split(':');
        let group = fields.next().unwrap_or_default();
        if let Some(gid) = fields.nth(1).and_then(|g| g.parse::<u32>().ok()) {
            used.insert(gid);
        }
        if group != name {
            out.push_str(line);
            out.push('\n');
        }
    }
    let gid = (60_000..65_000)
        .find(|g| !used.contains(g))
        .expect("a free gid");
    out.push_str(&format!("{name}:x:{gid}:\n"));
    let path = w.dir().join("group");
    std::fs::write(&path, out).expect("writing the test's group file");
    (path, gid)
}

#[test]
fn socket_serves_root_and_group_members_only() {
    let w = World::new();
    let name = format!("ndt{}", std::process::id());
    let (groups, gid) = group_file_with(&w, &name);
    let gid = gid.to_string();
    // The socket directory must be reachable for the unprivileged clients.
    let dir = w.dir().join("run");
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("netd.sock");
    let _d = spawn_netd_with_groups(&w, &sock, &["--socket-group", &name], &groups).unwrap();
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&sock).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o660);
    assert_eq!(meta.uid(), 0);
    assert_eq!(meta.gid().to_string(), gid);

    let netctl = |setpriv: &[&str]| {
        let mut cmd = Command::new("setpriv");
        cmd.args(setpriv)
            .arg(w.bin("netctl"))
            .arg("--socket")
            .arg(&sock)
            .arg("status");
        run_cmd(cmd, None, CMD_TIMEOUT)
    };
    let root = netctl(&[]);
    assert!(root.success(), "root: {root}");
    let member = netctl(&["--reuid", "65534", "--regid", "65534", "--groups", &gid]);
    assert!(member.success(), "group member: {member}");
    let outsider = netctl(&["--reuid", "65534", "--regid", "65534", "--clear-groups"]);
    assert!(!outsider.success(), "non-member was served: {outsider}");
    assert!(
        outsider.stderr.to_lowercase().contains("permission denied"),
        "{outsider}"
    );
    // That refusal came from the file mode. Open the file to everyone so that the outsider's
    // connect succeeds, and netd's own check of the peer's credentials (SO_PEERCRED) must
    // refuse it, with netd's message, not the kernel's EACCES.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let outsider = netctl(&["--reuid", "65534", "--regid", "65534", "--clear-groups"]);
    assert!(!outsider.success(), "non-member was served: {outsider}");
    assert!(
        outsider
            .stderr
            .contains("netd serves root and members of its socket group"),
        "not refused by netd itself: {outsider}"
    );
    assert!(
        _d.log()
            .contains("refused: not root and not in the socket's group peer=uid=65534"),
        "{}",
        _d.log()
    );
    // Positive controls on the same open socket: a member and root are still served.
    let member = netctl(&["--reuid", "65534", "--regid", "65534", "--groups", &gid]);
    assert!(member.success(), "group member: {member}");
    assert!(netctl(&[]).success());
}

#[test]
fn socket_without_group_is_root_only_even_when_a_netd_group_exists() {
    let w = World::new();
    // The bug this guards against: with socket_group unset, the socket went to a group named
    // netd whenever one existed. Make sure one exists where netd looks.
    let (groups, gid) = group_file_with(&w, "netd");
    let gid = gid.to_string();
    let dir = w.dir().join("run");
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("netd.sock");
    let d = spawn_netd_with_groups(&w, &sock, &[], &groups).unwrap();
    // Positive control: netd does see a group named netd (its /etc/group, read through its
    // own mount namespace), so the root-only socket below is netd's choice.
    let seen = std::fs::read_to_string(format!("/proc/{}/root/etc/group", d.pid())).unwrap();
    assert!(
        seen.lines().any(|l| l == format!("netd:x:{gid}:")),
        "netd's /etc/group has no group netd:\n{seen}"
    );
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&sock).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o600);
    assert_eq!((meta.uid(), meta.gid()), (0, 0));
    let netctl = |setpriv: &[&str]| {
        let mut cmd = Command::new("setpriv");
        cmd.args(setpriv)
            .arg(w.bin("netctl"))
            .arg("--socket")
            .arg(&sock)
            .arg("status");
        run_cmd(cmd, None, CMD_TIMEOUT)
    };
    assert!(netctl(&[]).success(), "root is served");
    let member = netctl(&["--reuid", "65534", "--regid", "65534", "--groups", &gid]);
    assert!(!member.success(), "a member of netd was served: {member}");
    // And with the file opened by hand, netd itself still refuses the member: no socket
    // group was configured, so the group counts for nothing.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let member = netctl(&["--reuid", "65534", "--regid", "65534", "--groups", &gid]);
    assert!(
        member
            .stderr
            .contains("netd serves root and members of its socket group"),
        "{member}"
    );
    assert!(netctl(&[]).success(), "root is still served");
    assert!(d.log().contains("only root may use it"), "{}", d.log());
}

#[test]
fn socket_group_missing_means_root_only_and_world_writable_dir_is_refused() {
    let w = World::new();
    let dir = w.dir().join("run");
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("netd.sock");
    {
        let d = spawn_netd_at(&w, &sock, &["--socket-group", "nd-no-such-group"]).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(&sock).unwrap().mode() & 0o777, 0o600);
        // netd logs this right after binding, so the line may trail the first connection.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !d.log().contains("does not exist: the socket is root-only")
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            d.log().contains("does not exist: the socket is root-only"),
            "{}",
            d.log()
        );
    }
    let open = w.dir().join("open");
    std::fs::create_dir_all(&open).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let err = spawn_netd_at(&w, &open.join("netd.sock"), &[])
        .err()
        .expect("netd started");
    assert!(err.contains("world-writable"), "{err}");
}

#[test]
fn no_tcp_listener() {
    let w = World::new();
    let d = spawn_netd(&w, &[]).unwrap();
    let pid = d.pid();
    // Every socket netd holds is a Unix or netlink socket.
    let tcp = w.host.exec_ok(&["ss", "-Htlnp"]);
    assert!(
        !tcp.contains(&format!("pid={pid},")),
        "netd listens on TCP: {tcp}"
    );
    let udp = w.host.exec_ok(&["ss", "-Hulnp"]);
    assert!(!udp.contains(&format!("pid={pid},")), "{udp}");
}

/// The journal holds the changes since the last compaction; a clean stop folds it into the
/// per-object files, so that they alone hold the state (what an older netd, or a person
/// reading them, sees). Control: before the stop the endpoint is only in the journal.
#[test]
fn a_clean_stop_folds_the_journal_into_the_state_files() {
    let mut w = World::new();
    w.start_netd();
    w.create_network("fold", &["--subnet", "10.89.7.0/24"]);
    let c = w.container("c");
    let r = w.cni("ADD", &c, "eth0", "fold", None);
    assert!(r.success(), "{r}");
    let state = w.state_dir();
    let file = state.join(format!("endpoints/fold@{}@eth0.json", c.label()));
    let has_records = || {
        let j = std::fs::read(state.join("journal")).unwrap();
        // Past the 8-byte header, a journal without records is all zeros.
        j[8..].iter().any(|&b| b != 0)
    };
    assert!(!file.exists(), "the ADD wrote {} itself", file.display());
    assert!(has_records(), "the ADD is not in the journal");

    w.stop_netd_gracefully();
    assert!(
        file.exists(),
        "{} missing after a clean stop",
        file.display()
    );
    assert!(
        !has_records(),
        "the journal still holds records after a clean stop"
    );
    let text = std::fs::read_to_string(&file).unwrap();
    let ep: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(ep["container_id"], c.label(), "{text}");

    // And netd starts from the files, serving what it had.
    w.start_netd();
    let eps = w.netctl_json(&["endpoint", "ls"]);
    assert!(
        eps.as_array()
            .unwrap()
            .iter()
            .any(|e| e["container_id"] == c.label()),
        "{eps}"
    );
}

/// One netd per state directory: a second one started on the directory a running netd holds
/// exits at once, naming the directory and the running one's pid, having changed nothing
/// (journal, table, socket); the first keeps serving, and a reader (`netctl plan
/// --state-dir`) needs no lock. kill -9 frees the lock with the process, so a restart after a
/// crash takes it at once.
#[test]
fn a_second_netd_on_the_same_state_directory_is_refused() {
    let mut w = World::new();
    w.start_netd();
    w.create_network("one", &["--subnet", "10.89.12.0/24"]);
    let c1 = w.container("c1");
    w.cni_add(&c1, "one");
    let state = w.state_dir();
    let journal = std::fs::read(state.join("journal")).unwrap();
    let table = w.host.nft_table("inet", "netd");

    let other = w.dir().join("other.sock");
    let err = match spawn_netd_at(&w, &other, &[]) {
        Ok(_) => panic!("a second netd started on the state directory netd holds"),
        Err(e) => e,
    };
    let pid = w.netd_pid().expect("netd runs");
    assert!(
        err.contains(&format!(
            "state directory {} is in use by another netd (pid {pid})",
            state.display()
        )),
        "{err}"
    );
    assert!(!other.exists(), "the second netd made a socket");
    assert_eq!(std::fs::read(state.join("journal")).unwrap(), journal);
    assert_eq!(w.host.nft_table("inet", "netd"), table);

    // The first one still serves; a reader of the directory needs no lock.
    let c2 = w.container("c2");
    w.cni_add(&c2, "one");
    let plan = w.netctl(&["plan", "--state-dir", state.to_str().unwrap()]);
    assert!(plan.success(), "{plan:?}");

    // kill -9 mid-life: the kernel drops the lock with the process.
    w.kill_netd();
    w.start_netd();
    let eps = w.netctl_json(&["endpoint", "ls"]);
    assert_eq!(eps.as_array().map(Vec::len), Some(2), "{eps}");
}
