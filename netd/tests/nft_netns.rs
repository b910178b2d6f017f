//! Kernel tests of netd's nf_tables layer and table. They need root, `ip` and `nft`; each test
//! works in its own throwaway network namespace and never touches the root namespace.
//!
//! The applier runs on a dedicated thread that has entered the test's namespace (a netlink
//! socket belongs to the namespace of the thread that opens it); the test thread itself
//! stays where it is and inspects the namespace through `ip netns exec NS nft ...`.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use netd::model::Proto;
use netd::nft::{Batch, ElemData, Family, SetElem, Socket, Verdict as NftVerdict};
use netd::plan::shape::{
    BoundDnat, BoundDnatRange, Dnat, DnatRange, Iface, IfaceVerdict, Open, OpenRange, SameIface,
};
use netd::plan::{sets, ChainId, Desired, Elem, SetId, Verdict};
use netd::ruleset::{self, render_template, Applier, TEMPLATE};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A named netns that is deleted when the guard drops, also when the test panics.
struct Netns {
    name: String,
}

impl Netns {
    fn new() -> Option<Netns> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            // Fails loudly unless skipping was asked for (never in CI): a kernel test that
            // passes by not running proves nothing.
            if std::env::var_os("NETD_TESTS_ALLOW_SKIP").is_some_and(|v| v == "1") {
                eprintln!("SKIPPED (NETD_TESTS_ALLOW_SKIP=1): needs root");
                return None;
            }
            panic!("this test needs root (network namespaces, nf_tables); run it as root, or set NETD_TESTS_ALLOW_SKIP=1 to skip it");
        }
        let name = format!(
            "nftt-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let st = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("run ip");
        assert!(st.success(), "ip netns add {name}");
        Some(Netns { name })
    }

    fn nft_out(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name, "nft"])
            .args(args)
            .output()
            .expect("run nft");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn nft(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.nft_out(args);
        assert!(ok, "nft {args:?} failed: {err}");
        out
    }

    fn nft_file(&self, text: &str) {
        let path = std::env::temp_dir().join(format!("{}.nft", self.name));
        std::fs::write(&path, text).unwrap();
        self.nft(&["-f", path.to_str().unwrap()]);
        let _ = std::fs::remove_file(path);
    }

    fn list(&self) -> String {
        self.nft(&["list", "table", "inet", "netd"])
    }

    /// Runs `f` on a new thread inside the namespace and returns its result (re-raising its
    /// panic here).
    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).expect("open netns");
            // SAFETY: ns is an open netns file; only this thread changes namespace.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    }

    fn sync(&self, d: &Desired) -> Result<(), String> {
        let d = d.clone();
        self.run(move || {
            let mut a = Applier::new("netd").map_err(|e| e.to_string())?;
            a.sync_full(&d).map_err(|e| e.to_string())
        })
    }

    fn apply(&self, diff: &netd::plan::Diff) -> Result<(), String> {
        let diff = diff.clone();
        self.run(move || {
            let mut a = Applier::new("netd").map_err(|e| e.to_string())?;
            a.apply_diff(&diff).map_err(|e| e.to_string())
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // NFTT_KEEP=1 keeps the namespaces of a failing test for inspection.
        if std::thread::panicking() && std::env::var_os("NFTT_KEEP").is_some() {
            eprintln!("keeping netns {}", self.name);
            return;
        }
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}

fn any4(proto: Proto, hp: u16, a: [u8; 4], p: u16) -> Dnat<Ipv4Addr> {
    Dnat {
        proto,
        host_port: hp,
        addr: Ipv4Addr::from(a),
        port: p,
    }
}

fn bound4(proto: Proto, host: [u8; 4], hp: u16, a: [u8; 4], p: u16) -> BoundDnat<Ipv4Addr> {
    BoundDnat {
        proto,
        host_addr: Ipv4Addr::from(host),
        host_port: hp,
        addr: Ipv4Addr::from(a),
        port: p,
    }
}

fn v6(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

fn rich() -> Desired {
    let mut d = Desired::default();
    for b in ["br-a", "br-b", "br-int"] {
        d.insert(sets::BRIDGES, Iface(b.into()));
    }
    d.insert(sets::SAME_NET, SameIface("br-a".into(), Verdict::Accept));
    d.insert(
        sets::SAME_NET,
        SameIface("br-b".into(), Verdict::Goto(ChainId::IccOff)),
    );
    d.insert(
        sets::IN4,
        IfaceVerdict("br-a".into(), Verdict::Goto(ChainId::ToNat)),
    );
    d.insert(
        sets::IN4,
        IfaceVerdict("br-b".into(), Verdict::Goto(ChainId::ToRouted)),
    );
    d.insert(sets::IN4, IfaceVerdict("br-int".into(), Verdict::Drop));
    d.insert(
        sets::IN6,
        IfaceVerdict("br-a".into(), Verdict::Goto(ChainId::ToNat)),
    );
    d.insert(sets::OUT4, IfaceVerdict("br-a".into(), Verdict::Accept));
    d.insert(sets::OUT4, IfaceVerdict("br-int".into(), Verdict::Drop));
    d.insert(sets::OUT6, IfaceVerdict("br-a".into(), Verdict::Accept));
    d.insert(sets::SEALED, Iface("br-int".into()));
    for n in ["10.88.0.0/16", "10.89.1.0/24"] {
        d.insert(sets::MASQ4, n.parse().unwrap());
    }
    for n in ["10.88.0.0/16", "10.89.1.0/24", "10.90.0.0/24"] {
        d.insert(sets::SUBNETS4, n.parse().unwrap());
    }
    d.insert(sets::MASQ6, "fd00:88::/64".parse().unwrap());
    for n in ["fd00:88::/64", "fd00:89::/64"] {
        d.insert(sets::SUBNETS6, n.parse().unwrap());
    }
    d.insert(sets::DNAT4_ANY, any4(Proto::Tcp, 8080, [10, 88, 0, 2], 80));
    d.insert(sets::DNAT4_ANY, any4(Proto::Udp, 5353, [10, 88, 0, 3], 53));
    d.insert(
        sets::DNAT4_BOUND,
        bound4(Proto::Tcp, [192, 0, 2, 1], 443, [10, 88, 0, 2], 443),
    );
    d.insert(
        sets::DNAT6_ANY,
        Dnat {
            proto: Proto::Tcp,
            host_port: 8080,
            addr: v6("fd00:88::2"),
            port: 80,
        },
    );
    d.insert(
        sets::DNAT6_BOUND,
        BoundDnat {
            proto: Proto::Sctp,
            host_addr: v6("2001:db8::1"),
            host_port: 9,
            addr: v6("fd00:88::3"),
            port: 99,
        },
    );
    for (p, port) in [(Proto::Tcp, 80), (Proto::Udp, 53)] {
        d.insert(
            sets::OPEN4,
            Open {
                addr: Ipv4Addr::new(10, 89, 1, 2),
                proto: p,
                port,
            },
        );
    }
    d.insert(
        sets::OPEN6,
        Open {
            addr: v6("fd00:89::2"),
            proto: Proto::Tcp,
            port: 80,
        },
    );
    // Port ranges, two of them adjacent (different containers), one a single port wide.
    for (proto, first, last, a) in [
        (Proto::Tcp, 20000, 20099, [10, 88, 0, 2]),
        (Proto::Tcp, 20100, 20199, [10, 88, 0, 3]),
        (Proto::Udp, 20000, 20000, [10, 88, 0, 2]),
    ] {
        d.insert(
            sets::DNAT4_ANY_RANGES,
            DnatRange {
                proto,
                first,
                last,
                addr: Ipv4Addr::from(a),
            },
        );
    }
    d.insert(
        sets::DNAT4_BOUND_RANGES,
        BoundDnatRange {
            proto: Proto::Tcp,
            host_addr: Ipv4Addr::new(192, 0, 2, 1),
            first: 30000,
            last: 30009,
            addr: Ipv4Addr::new(10, 88, 0, 2),
        },
    );
    d.insert(
        sets::DNAT6_ANY_RANGES,
        DnatRange {
            proto: Proto::Tcp,
            first: 20000,
            last: 20099,
            addr: v6("fd00:88::2"),
        },
    );
    d.insert(
        sets::DNAT6_BOUND_RANGES,
        BoundDnatRange {
            proto: Proto::Sctp,
            host_addr: v6("2001:db8::1"),
            first: 1000,
            last: 1001,
            addr: v6("fd00:88::3"),
        },
    );
    for (addr, first, last) in [([10, 89, 1, 2], 8000, 8099), ([10, 89, 1, 3], 1, 65535)] {
        d.insert(
            sets::OPEN4_RANGES,
            OpenRange {
                addr: Ipv4Addr::from(addr),
                proto: Proto::Tcp,
                first,
                last,
            },
        );
    }
    d.insert(
        sets::OPEN6_RANGES,
        OpenRange {
            addr: v6("fd00:89::2"),
            proto: Proto::Udp,
            first: 5000,
            last: 5001,
        },
    );
    d
}

#[test]
fn empty_sync_lists_as_the_template() {
    let Some(ns) = Netns::new() else { return };
    ns.sync(&Desired::default()).unwrap();
    assert_eq!(ns.list(), render_template(TEMPLATE, &Desired::default()));
}

#[test]
fn sync_full_matches_rendered_template_and_recovers() {
    let Some(ns) = Netns::new() else { return };
    let mut d = rich();
    // Covered by 10.88.0.0/16: normalized away (the kernel refuses overlapping intervals).
    d.insert(sets::MASQ4, "10.88.5.0/24".parse().unwrap());
    let want = render_template(TEMPLATE, &d);
    assert_eq!(want, render_template(TEMPLATE, &rich()));
    ns.sync(&d).unwrap();
    assert_eq!(ns.list(), want);
    // The healer's view of the kernel's elements (range elements with their end keys
    // included) is the one it expects for this state.
    let expected = netd::daemon::heal::expected_view(&d);
    let have = ns.run(|| {
        netd::nft::monitor::Inspector::open()
            .unwrap()
            .table("netd")
            .unwrap()
    });
    assert!(
        have.sets["dnat4_any_ranges"]
            .iter()
            .all(|e| e.key_end.is_some()),
        "{:?}",
        have.sets["dnat4_any_ranges"]
    );
    assert_eq!(have.sets["dnat4_any_ranges"].len(), 3);
    assert_eq!(
        netd::daemon::heal::differences(&expected, &have),
        Vec::<String>::new()
    );

    // Restart: the table exists with every element.
    ns.sync(&d).unwrap();
    assert_eq!(ns.list(), want);

    ns.nft(&["flush", "ruleset"]);
    ns.sync(&d).unwrap();
    assert_eq!(ns.list(), want);

    ns.nft(&["delete", "table", "inet", "netd"]);
    ns.sync(&d).unwrap();
    assert_eq!(ns.list(), want);

    // Back to empty: every set flushed.
    ns.sync(&Desired::default()).unwrap();
    assert_eq!(ns.list(), render_template(TEMPLATE, &Desired::default()));
}

#[test]
fn user_forward_rules_survive_sync() {
    let Some(ns) = Netns::new() else { return };
    ns.sync(&Desired::default()).unwrap();
    ns.nft(&[
        "add",
        "rule",
        "inet",
        "netd",
        "user_forward",
        "iifname",
        "\"eth9\"",
        "drop",
    ]);
    let d = rich();
    ns.sync(&d).unwrap();
    ns.sync(&d).unwrap();
    let want = render_template(TEMPLATE, &d).replace(
        "\tchain user_forward {\n\t}\n",
        "\tchain user_forward {\n\t\tiifname \"eth9\" drop\n\t}\n",
    );
    assert_eq!(ns.list(), want);
}

#[test]
fn apply_diff_matches_rendered_template() {
    let Some(ns) = Netns::new() else { return };
    let old = rich();
    let mut new = rich();
    new.sets.remove(&SetId::Sealed);
    new.sets
        .get_mut(&SetId::Bridges)
        .unwrap()
        .remove(&Elem::Iface("br-int".into()));
    new.insert(sets::BRIDGES, Iface("br-c".into()));
    new.insert(sets::SUBNETS4, "10.91.0.0/24".parse().unwrap());
    // Adjacent to 10.89.1.0/24 (its end element has the other's start key).
    new.insert(sets::MASQ4, "10.89.0.0/24".parse().unwrap());
    new.insert(sets::MASQ4, "10.89.2.0/24".parse().unwrap());
    new.sets
        .get_mut(&SetId::Subnets4)
        .unwrap()
        .remove(&Elem::Net4("10.89.1.0/24".parse().unwrap()));
    // Same key, new target: a removal and an addition in one batch.
    new.sets
        .get_mut(&SetId::Dnat4Any)
        .unwrap()
        .remove(&Elem::from(any4(Proto::Tcp, 8080, [10, 88, 0, 2], 80)));
    new.insert(
        sets::DNAT4_ANY,
        any4(Proto::Tcp, 8080, [10, 88, 0, 9], 8080),
    );
    new.insert(
        sets::IN6,
        IfaceVerdict("br-b".into(), Verdict::Goto(ChainId::ToRouted)),
    );
    // A range added next to existing ones, another removed. (nft prints the range sets in
    // the order their elements were added; these sort last in netd's order too.)
    new.insert(
        sets::DNAT4_ANY_RANGES,
        DnatRange {
            proto: Proto::Sctp,
            first: 20000,
            last: 20099,
            addr: Ipv4Addr::new(10, 88, 0, 4),
        },
    );
    new.sets
        .get_mut(&SetId::Open4Ranges)
        .unwrap()
        .remove(&Elem::Open4Range {
            addr: Ipv4Addr::new(10, 89, 1, 3),
            proto: Proto::Tcp,
            first: 1,
            last: 65535,
        });

    ns.sync(&old).unwrap();
    let d = old.diff(&new);
    ns.apply(&d).unwrap();
    assert_eq!(ns.list(), render_template(TEMPLATE, &new));

    ns.apply(&new.diff(&old)).unwrap();
    assert_eq!(ns.list(), render_template(TEMPLATE, &old));
}

#[test]
fn ten_thousand_dnat_elements_in_one_sync() {
    let Some(ns) = Netns::new() else { return };
    let mut d = Desired::default();
    for i in 0..10_000u32 {
        d.insert(
            sets::DNAT4_ANY,
            any4(
                Proto::Tcp,
                (10_000 + i) as u16,
                [10, 88, (i / 250) as u8, (i % 250 + 2) as u8],
                80,
            ),
        );
    }
    let report = ns.run(move || {
        let mut a = Applier::new("netd").unwrap();
        let mut lines = Vec::new();
        for round in ["empty table", "table holding them (flush + re-add)"] {
            let t = Instant::now();
            let (batch, groups) = ruleset::full_batch("netd", &d).unwrap();
            let built = t.elapsed();
            let bytes = batch.encode(0).unwrap().bytes.len();
            let t = Instant::now();
            a.commit(&batch, &groups).unwrap();
            lines.push(format!(
                "10000 dnat elements, sync_full into {round}: build {built:?}, \
                 {} messages / {bytes} bytes, send + acks {:?}",
                batch.len(),
                t.elapsed()
            ));
        }
        lines
    });
    for l in report {
        eprintln!("{l}");
    }
    let out = ns.nft(&["list", "map", "inet", "netd", "dnat4_any"]);
    assert_eq!(out.matches(" : 10.88.").count(), 10_000);
}

#[test]
fn failing_batch_changes_nothing_and_names_the_message() {
    let Some(ns) = Netns::new() else { return };
    let d = rich();
    ns.sync(&d).unwrap();
    let before = ns.list();

    // A removal that would succeed, then an add (EXCL) of a key that exists.
    let mut diff = netd::plan::Diff::default();
    diff.remove
        .insert(SetId::Bridges, vec![Elem::Iface("br-a".into())]);
    diff.add.insert(
        SetId::Dnat4Any,
        vec![any4(Proto::Tcp, 8080, [10, 88, 0, 7], 80).into()],
    );
    let err = ns.apply(&diff).unwrap_err();
    eprintln!("error: {err}");
    assert!(
        err.contains("add element to set dnat4_any: File exists (errno 17)"),
        "{err}"
    );
    assert_eq!(ns.list(), before);

    // Removing an element that is not there.
    let mut diff = netd::plan::Diff::default();
    diff.remove
        .insert(SetId::Sealed, vec![Elem::Iface("br-none".into())]);
    let err = ns.apply(&diff).unwrap_err();
    eprintln!("error: {err}");
    assert!(err.contains("delete element from set sealed"), "{err}");
    assert!(err.contains("errno 2"), "{err}");
    assert_eq!(ns.list(), before);

    // A vmap element jumping to a chain that does not exist, after a valid addition.
    let err = ns.run(|| {
        let mut sock = Socket::open().unwrap();
        let mut b = Batch::new(Family::Inet);
        let mut key = b"br-new".to_vec();
        key.resize(16, 0);
        b.add_elems(
            "netd",
            "bridges",
            &[SetElem {
                key: key.clone(),
                key_end: None,
                data: None,
                flags: 0,
            }],
            false,
        );
        b.add_elems(
            "netd",
            "in4",
            &[SetElem {
                key,
                key_end: None,
                data: Some(ElemData::Verdict(NftVerdict::Goto("no_such_chain".into()))),
                flags: 0,
            }],
            false,
        );
        sock.commit(&b).unwrap_err().to_string()
    });
    eprintln!("error: {err}");
    assert!(err.contains("add element to set in4"), "{err}");
    assert!(err.contains("errno 2"), "{err}");
    assert_eq!(ns.list(), before);
}

#[test]
fn foreign_table_is_untouched() {
    let Some(ns) = Netns::new() else { return };
    ns.nft_file(
        "table ip filter {\n\tchain forward {\n\t\ttype filter hook forward priority filter; policy drop;\n\t\tiifname \"eth0\" accept\n\t}\n}\n",
    );
    let before = ns.nft(&["list", "table", "ip", "filter"]);
    let d = rich();
    ns.sync(&d).unwrap();
    ns.apply(&d.diff(&Desired::default())).unwrap();
    ns.sync(&d).unwrap();
    assert_eq!(ns.nft(&["list", "table", "ip", "filter"]), before);
    assert_eq!(ns.list(), render_template(TEMPLATE, &d));
}

/// The kernel holds the same expressions whether nft loaded the template or netd synced it:
/// compared on nft's decoded netlink view of the whole table, handles included.
#[test]
fn expressions_equal_those_nft_generates() {
    let Some(by_nft) = Netns::new() else { return };
    let Some(by_netd) = Netns::new() else { return };
    let tmpl: String = TEMPLATE
        .lines()
        .filter(|l| !l.trim_start().starts_with("@elements"))
        .map(|l| format!("{l}\n"))
        .collect();
    by_nft.nft_file(&tmpl);
    by_netd.sync(&Desired::default()).unwrap();
    let args = ["--debug=netlink", "list", "table", "inet", "netd"];
    // nft prints the decoded expressions on stderr.
    let dump = |ns: &Netns| {
        let (ok, out, err) = ns.nft_out(&args);
        assert!(ok, "{err}");
        format!("{err}{out}")
    };
    let (a, b) = (dump(&by_nft), dump(&by_netd));
    assert!(
        a.contains("[ nat dnat ip6 addr_min reg 1 addr_max reg 1 proto_min reg 2"),
        "{a}"
    );
    assert_eq!(b, a);
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Serves one line per connection ("peer <addr>") on port 80 of every address of the netns.
fn serve(ns: &Netns) {
    let path = format!("/run/netns/{}", ns.name);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::Write;
        let f = std::fs::File::open(&path).unwrap();
        // SAFETY: f is an open netns file; only this thread changes namespace.
        assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
        let l = std::net::TcpListener::bind("[::]:80").unwrap();
        tx.send(()).unwrap();
        for mut s in l.incoming().flatten() {
            let peer = s.peer_addr().unwrap().ip().to_canonical();
            let _ = writeln!(s, "peer {peer}");
        }
    });
    rx.recv().unwrap();
}

/// Connects from inside `ns` and returns the server's line, or the connect error.
fn fetch(ns: &Netns, to: &str) -> Result<String, String> {
    let to: std::net::SocketAddr = to.parse().unwrap();
    ns.run(move || {
        use std::io::Read;
        let mut s = std::net::TcpStream::connect_timeout(&to, std::time::Duration::from_secs(2))
            .map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).map_err(|e| e.to_string())?;
        Ok(out.trim().to_string())
    })
}

/// Real TCP through the DNAT maps: client netns -> host netns (netd's table) -> container.
#[test]
fn published_ports_reach_the_container() {
    let Some(host) = Netns::new() else { return };
    let Some(ctr) = Netns::new() else { return };
    let Some(client) = Netns::new() else { return };
    let (h, c, x) = (&host.name, &ctr.name, &client.name);
    ip(&[
        "-n", h, "link", "add", "h-c", "type", "veth", "peer", "name", "c-h", "netns", c,
    ]);
    ip(&[
        "-n", h, "link", "add", "h-x", "type", "veth", "peer", "name", "x-h", "netns", x,
    ]);
    for (ns, dev, a4, a6) in [
        (h, "h-c", "10.88.0.1/24", "fd00:88::1/64"),
        (h, "h-x", "192.0.2.1/24", "2001:db8::1/64"),
        (c, "c-h", "10.88.0.2/24", "fd00:88::2/64"),
        (x, "x-h", "192.0.2.2/24", "2001:db8::2/64"),
    ] {
        ip(&["-n", ns, "addr", "add", a4, "dev", dev]);
        ip(&["-n", ns, "addr", "add", a6, "dev", dev, "nodad"]);
        ip(&["-n", ns, "link", "set", dev, "up"]);
        ip(&["-n", ns, "link", "set", "lo", "up"]);
    }
    ip(&["-n", c, "route", "add", "default", "via", "10.88.0.1"]);
    ip(&[
        "-n",
        c,
        "-6",
        "route",
        "add",
        "default",
        "via",
        "fd00:88::1",
    ]);
    for key in ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"] {
        let st = Command::new("ip")
            .args(["netns", "exec", h, "sysctl", "-qw", key])
            .status()
            .unwrap();
        assert!(st.success());
    }

    let mut d = Desired::default();
    d.insert(sets::BRIDGES, Iface("h-c".into()));
    for set in [sets::IN4, sets::IN6] {
        d.insert(
            set,
            IfaceVerdict("h-c".into(), Verdict::Goto(ChainId::ToNat)),
        );
    }
    d.insert(sets::SUBNETS4, "10.88.0.0/24".parse().unwrap());
    d.insert(sets::MASQ4, "10.88.0.0/24".parse().unwrap());
    d.insert(sets::DNAT4_ANY, any4(Proto::Tcp, 8080, [10, 88, 0, 2], 80));
    d.insert(
        sets::DNAT4_BOUND,
        bound4(Proto::Tcp, [192, 0, 2, 1], 8081, [10, 88, 0, 2], 80),
    );
    d.insert(
        sets::DNAT6_ANY,
        Dnat {
            proto: Proto::Tcp,
            host_port: 8080,
            addr: v6("fd00:88::2"),
            port: 80,
        },
    );
    host.sync(&d).unwrap();
    serve(&ctr);
    // Fresh veths (and IPv6 neighbour discovery while link-local addresses are still
    // tentative) can lose the very first packets: wait until each path works at all.
    let ready = |to: &str| {
        (0..5)
            .map(|_| fetch(&client, to))
            .find(|r| r.is_ok())
            .unwrap_or_else(|| fetch(&client, to))
    };
    assert_eq!(ready("192.0.2.1:8080").unwrap(), "peer 192.0.2.2");
    assert_eq!(ready("[2001:db8::1]:8080").unwrap(), "peer 2001:db8::2");
    assert_eq!(fetch(&client, "192.0.2.1:8080").unwrap(), "peer 192.0.2.2");
    assert_eq!(fetch(&client, "192.0.2.1:8081").unwrap(), "peer 192.0.2.2");
    assert_eq!(
        fetch(&client, "[2001:db8::1]:8080").unwrap(),
        "peer 2001:db8::2"
    );
    // Not published: nothing listens on the host itself.
    assert!(fetch(&client, "192.0.2.1:8082").is_err());
    // The container's own address is not reachable from outside in nat mode.
    ip(&["-n", x, "route", "add", "10.88.0.0/24", "via", "192.0.2.1"]);
    assert!(fetch(&client, "10.88.0.2:80").is_err());

    // Unpublishing takes effect for new connections.
    let mut after = d.clone();
    after.sets.remove(&SetId::Dnat4Any);
    host.apply(&d.diff(&after)).unwrap();
    assert!(fetch(&client, "192.0.2.1:8080").is_err());
    assert_eq!(fetch(&client, "192.0.2.1:8081").unwrap(), "peer 192.0.2.2");
}
