//! `bench`: netd side by side with the CNI reference plugins (bridge + portmap + firewall with
//! host-local IPAM, chained as libcni does) and netavark, each in its own private host netns.
//! Never touches the machine's root network namespace. Run it through `scripts/bench.sh`.
//!
//! ```text
//! bench [--sizes 10,100,1000] [--sample 20] [--ports 10,1000,10000] [--rate-secs 1]
//!       [--burst 100] [--scale 5000 --scale-networks 5]
//!       [--systems netd,cni,netavark,netavark2] [--phases ...] [--out docs/bench] [--quick]
//! ```

mod conn;
mod floor;
mod plot;
mod report;
mod runner;
mod stats;
mod systems;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use netd_netns_tests::world::HOST_EXT_V4;
use netd_netns_tests::Netns;

use crate::stats::Summary;
use crate::systems::{Ctr, Kind, Port, System};

#[derive(Debug, Clone)]
pub struct Opts {
    pub sizes: Vec<usize>,
    pub sample: usize,
    pub ports: Vec<usize>,
    pub rate_secs: f64,
    /// The CNI peer's portmap runs iptables once or twice per rule; above this many ports
    /// its ADD takes minutes, so it is not run.
    pub cni_max_ports: usize,
    pub systems: Vec<Kind>,
    pub out: PathBuf,
    /// ADDs started at once in the burst phase.
    pub burst: usize,
    /// netd's scale phase: endpoints, spread over this many networks.
    pub scale: usize,
    pub scale_networks: usize,
    pub phases: Vec<Phase>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Floor,
    Ports,
    Endpoints,
    Burst,
    Scale,
}

impl Phase {
    const ALL: [Phase; 5] = [
        Phase::Floor,
        Phase::Ports,
        Phase::Burst,
        Phase::Endpoints,
        Phase::Scale,
    ];
    fn parse(s: &str) -> Phase {
        match s {
            "floor" => Phase::Floor,
            "ports" => Phase::Ports,
            "endpoints" => Phase::Endpoints,
            "burst" => Phase::Burst,
            "scale" => Phase::Scale,
            x => panic!("unknown phase {x} (floor, ports, burst, endpoints, scale)"),
        }
    }
}

fn parse_list(s: &str) -> Vec<usize> {
    s.split(',')
        .map(|x| x.trim().replace('_', "").parse().expect("a number"))
        .collect()
}

fn parse_args() -> Opts {
    let mut o = Opts {
        sizes: vec![10, 100, 1000],
        sample: 20,
        ports: vec![10, 1000, 10000],
        rate_secs: 2.0,
        cni_max_ports: 1000,
        systems: vec![Kind::Netd, Kind::Cni, Kind::Netavark, Kind::Netavark2],
        out: PathBuf::from("docs/bench"),
        burst: 100,
        scale: 5000,
        scale_networks: 5,
        phases: Phase::ALL.to_vec(),
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let val = || args.get(i + 1).cloned().expect("option needs a value");
        match args[i].as_str() {
            "--sizes" => o.sizes = parse_list(&val()),
            "--sample" => o.sample = val().parse().expect("--sample N"),
            "--ports" => o.ports = parse_list(&val()),
            "--rate-secs" => o.rate_secs = val().parse().expect("--rate-secs S"),
            "--cni-max-ports" => o.cni_max_ports = val().parse().expect("--cni-max-ports N"),
            "--out" => o.out = PathBuf::from(val()),
            "--burst" => o.burst = val().parse().expect("--burst N"),
            "--scale" => o.scale = val().replace('_', "").parse().expect("--scale N"),
            "--scale-networks" => o.scale_networks = val().parse().expect("--scale-networks N"),
            "--phases" => o.phases = val().split(',').map(Phase::parse).collect(),
            "--systems" => {
                o.systems = val()
                    .split(',')
                    .map(|s| match s {
                        "netd" => Kind::Netd,
                        "cni" => Kind::Cni,
                        "netavark" | "netavark1" => Kind::Netavark,
                        "netavark2" => Kind::Netavark2,
                        x => panic!("unknown system {x} (netd, cni, netavark, netavark2)"),
                    })
                    .collect()
            }
            "--quick" => {
                o.sizes = vec![10, 30];
                o.sample = 5;
                o.ports = vec![10, 100];
                o.rate_secs = 0.5;
                o.burst = 10;
                o.scale = 200;
                o.scale_networks = 2;
                i += 1;
                continue;
            }
            "-h" | "--help" => {
                println!("{}", include_str!("usage.txt"));
                std::process::exit(0);
            }
            x => panic!("unknown argument {x} (try --help)"),
        }
        i += 2;
    }
    o
}

/// Everything measured, per system.
#[derive(Debug, Default, Clone)]
pub struct SysResult {
    pub version: String,
    /// N → (ADD sample, DEL sample)
    pub add: BTreeMap<usize, Vec<f64>>,
    pub del: BTreeMap<usize, Vec<f64>>,
    /// Every ADD of the fill phase, in order (ms).
    pub fill: Vec<f64>,
    pub ports: BTreeMap<usize, PortResult>,
    /// netd only: N → VmRSS KiB, CPU ms per fill ADD.
    pub rss_kib: BTreeMap<usize, u64>,
    pub cpu_ms_per_add: BTreeMap<usize, f64>,
    pub errors: Vec<String>,
    /// netd only: (VmRSS, VmHWM) KiB at the end of the port phase, before its restart.
    pub port_phase_mem: Option<(u64, u64)>,
    /// Process start-to-exit floor: VERSION calls (ms).
    pub floor: Vec<f64>,
    /// netd only: N → the kernel's share of one attach, in process ([`floor::link_floor`]).
    pub link_floor: BTreeMap<usize, Vec<f64>>,
    pub burst: Option<BurstResult>,
    /// netd only: restart at the largest N of the endpoint phase.
    pub restart: Option<RestartResult>,
    /// netd only: the scale phase.
    pub scale: Option<ScaleResult>,
}

#[derive(Debug, Default, Clone)]
pub struct BurstResult {
    pub calls: usize,
    pub failed: usize,
    /// From the common start until the last ADD ended (ms).
    pub add_wall_ms: f64,
    /// Each ADD from the common start to its end (ms).
    pub add_ms: Vec<f64>,
    pub del_wall_ms: f64,
    pub del_ms: Vec<f64>,
    pub first_error: Option<String>,
}

#[derive(Debug, Default, Clone)]
pub struct RestartResult {
    pub endpoints: usize,
    /// From spawning netd until it sent READY=1 (state loaded, table applied, links
    /// reconciled, socket listening).
    pub ready_ms: f64,
    /// The table's elements after the restart, as `netctl status` reports them.
    pub table_elements: Option<u64>,
}

#[derive(Debug, Default, Clone)]
pub struct ScaleResult {
    pub networks: usize,
    /// Checkpoint N → ADD and DEL samples at N (ms).
    pub add: BTreeMap<usize, Vec<f64>>,
    pub del: BTreeMap<usize, Vec<f64>>,
    pub rss_kib: BTreeMap<usize, u64>,
    /// Checkpoint N → the kernel's share of one attach on the first network's bridge.
    pub link_floor: BTreeMap<usize, Vec<f64>>,
    pub fill: Vec<f64>,
    pub restart: Option<RestartResult>,
    pub errors: Vec<String>,
}

#[derive(Debug, Default, Clone)]
pub struct PortResult {
    /// The ADD carrying all the mappings (ms), None if it failed.
    pub apply_add_ms: Option<f64>,
    /// From the ADD's start until the last port answered a TCP connect from outside (ms).
    pub last_port_ms: Option<f64>,
    /// From the ADD's exit until the last port answered (ms).
    pub after_add_ms: Option<f64>,
    /// A second container's ADD with one mapping while these are published (ms).
    pub one_more_add_ms: Option<f64>,
    pub one_more_del_ms: Option<f64>,
    /// DEL of the container with all the mappings (ms).
    pub del_ms: Option<f64>,
    pub rate_first: Option<f64>,
    pub rate_last: Option<f64>,
    /// Why this size was not run for this system.
    pub skipped: Option<String>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn log(msg: impl AsRef<str>) {
    eprintln!("[bench {:>7.1}s] {}", elapsed(), msg.as_ref());
}

static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
fn elapsed() -> f64 {
    START.get_or_init(Instant::now).elapsed().as_secs_f64()
}

fn new_ctr(kind: Kind, tag: &str, i: usize) -> Ctr {
    let short = match kind {
        Kind::Netavark2 => "n2",
        k => &k.name()[..2],
    };
    let id = format!("bench{short}{tag}{i:05}");
    Ctr {
        ns: Netns::new(&id, "c"),
        id,
        net: 0,
    }
}

/// /proc/PID/stat utime+stime in ms.
fn cpu_ms(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the ")" of comm: state is field 3; utime 14, stime 15.
    let rest = s.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    // SAFETY: sysconf(3) only reads a configuration value.
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let ut: f64 = f.get(11).and_then(|x| x.parse().ok()).unwrap_or(0.0);
    let st: f64 = f.get(12).and_then(|x| x.parse().ok()).unwrap_or(0.0);
    (ut + st) * 1000.0 / tick
}

fn status_kib(pid: u32, key: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|x| x.parse().ok())
        .unwrap_or(0)
}

fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// (VmRSS, VmHWM) in KiB.
fn mem_kib(pid: u32) -> (u64, u64) {
    (status_kib(pid, "VmRSS:"), status_kib(pid, "VmHWM:"))
}

fn host_addr(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(HOST_EXT_V4.parse::<Ipv4Addr>().unwrap()), port)
}

/// Port phase: one container publishing `k` ports (host 20000+i → container 20000+i), for
/// each k, systems alternating.
fn port_phase(o: &Opts, systems: &mut [System], res: &mut [SysResult]) {
    for &k in &o.ports {
        log(format!("ports: publishing {k} ports on one container"));
        let ports: Vec<Port> = (0..k)
            .map(|i| (20000 + i as u16, 20000 + i as u16))
            .collect();
        let first = ports[0].0;
        let last = ports[k - 1].0;
        for (s, r) in systems.iter_mut().zip(res.iter_mut()) {
            let mut pr = PortResult::default();
            if s.kind == Kind::Cni && k > o.cni_max_ports {
                pr.skipped = Some(format!(
                    "not run: above --cni-max-ports {} (portmap execs iptables per rule)",
                    o.cni_max_ports
                ));
                log(format!("  {}: {k} ports skipped", s.kind.name()));
                r.ports.insert(k, pr);
                continue;
            }
            let big = new_ctr(s.kind, "p", k);
            // Listeners on the first and last container ports, bound before the ADD.
            let l1 = conn::Listener::start(&big.ns, first);
            let l2 = (last != first).then(|| conn::Listener::start(&big.ns, last));
            let t = s.add(&big, &ports);
            if !t.ok {
                r.errors
                    .push(format!("ADD with {k} ports: {}", t.error.trim()));
                log(format!(
                    "  {}: ADD with {k} ports failed: {}",
                    s.kind.name(),
                    t.error
                ));
                let _ = s.del(&big);
                continue;
            }
            pr.apply_add_ms = Some(ms(t.elapsed));
            // The ADD's own time (process start to exit, measured by the runner) plus the time
            // from its exit until the last port answers; the bench's own JSON building and
            // pipe to the runner are not counted.
            pr.after_add_ms =
                conn::wait_answer(&s.world.external, host_addr(last), Duration::from_secs(10))
                    .map(ms);
            pr.last_port_ms = pr.after_add_ms.map(|a| a + ms(t.elapsed));
            let one = new_ctr(s.kind, "q", k);
            let t1 = s.add(&one, &[(40000, 80)]);
            if t1.ok {
                pr.one_more_add_ms = Some(ms(t1.elapsed));
                let d1 = s.del(&one);
                pr.one_more_del_ms = d1.ok.then(|| ms(d1.elapsed));
            } else {
                r.errors.push(format!(
                    "ADD of one more mapping next to {k}: {}",
                    t1.error.trim()
                ));
            }
            if pr.last_port_ms.is_some() {
                // Alternate first/last twice so drift cancels.
                let rounds = 4;
                let part = Duration::from_secs_f64(o.rate_secs / rounds as f64);
                let mut f = 0.0;
                let mut l = 0.0;
                for _ in 0..rounds {
                    f += conn::rate(&s.world.external, host_addr(first), part);
                    l += conn::rate(&s.world.external, host_addr(last), part);
                }
                pr.rate_first = Some(f / rounds as f64);
                pr.rate_last = Some(l / rounds as f64);
            } else {
                r.errors.push(format!(
                    "port {last} never answered after ADD with {k} ports"
                ));
            }
            drop(l1);
            drop(l2);
            let d = s.del(&big);
            pr.del_ms = d.ok.then(|| ms(d.elapsed));
            if !d.ok {
                r.errors
                    .push(format!("DEL with {k} ports: {}", d.error.trim()));
            }
            log(format!(
                "  {:<12} apply {:>10} last port {:>10} +1 ADD {:>8} rate first {:>8} last {:>8}",
                s.kind.name(),
                fmt_opt(pr.apply_add_ms, "ms"),
                fmt_opt(pr.last_port_ms, "ms"),
                fmt_opt(pr.one_more_add_ms, "ms"),
                fmt_opt(pr.rate_first, "/s"),
                fmt_opt(pr.rate_last, "/s"),
            ));
            r.ports.insert(k, pr);
        }
    }
}

pub fn fmt_opt(v: Option<f64>, unit: &str) -> String {
    match v {
        Some(x) if x >= 100.0 => format!("{x:.0} {unit}"),
        Some(x) => format!("{x:.2} {unit}"),
        None => "—".into(),
    }
}

/// Endpoint phase: grow every system to N endpoints (one published port each), then time a
/// sample of ADD/DEL pairs at N; systems alternate call by call.
#[allow(clippy::needless_range_loop)] // i indexes one sample per system
fn endpoint_phase(o: &Opts, systems: &mut [System], res: &mut [SysResult]) {
    let mut fill: Vec<Vec<Ctr>> = systems.iter().map(|_| Vec::new()).collect();
    let sample: Vec<Vec<Ctr>> = systems
        .iter()
        .map(|s| (0..o.sample).map(|i| new_ctr(s.kind, "s", i)).collect())
        .collect();
    let mut broken = vec![false; systems.len()];
    for &n in &o.sizes {
        log(format!("endpoints: filling to N = {n}"));
        let cpu0: Vec<Option<(f64, usize)>> = systems
            .iter()
            .zip(&fill)
            .map(|(s, f)| s.netd_pid().map(|p| (cpu_ms(p), f.len())))
            .collect();
        let have = fill[0].len();
        for i in have..n {
            for (j, s) in systems.iter_mut().enumerate() {
                if broken[j] {
                    continue;
                }
                let c = new_ctr(s.kind, "f", i);
                let t = s.add(&c, &[(10000 + i as u16, 80)]);
                if !t.ok {
                    res[j]
                        .errors
                        .push(format!("fill ADD #{i}: {}", t.error.trim()));
                    log(format!(
                        "  {} fill ADD #{i} failed: {}",
                        s.kind.name(),
                        t.error
                    ));
                    broken[j] = true;
                }
                res[j].fill.push(ms(t.elapsed));
                fill[j].push(c);
            }
            if (i + 1) % 100 == 0 {
                log(format!("  {} endpoints", i + 1));
            }
        }
        for (j, s) in systems.iter().enumerate() {
            if let (Some(pid), Some((c0, f0))) = (s.netd_pid(), cpu0[j]) {
                let added = fill[j].len() - f0;
                if added > 0 {
                    res[j]
                        .cpu_ms_per_add
                        .insert(n, (cpu_ms(pid) - c0) / added as f64);
                }
                res[j].rss_kib.insert(n, rss_kib(pid));
            }
        }
        log(format!(
            "endpoints: sampling {} ADD/DEL at N = {n}",
            o.sample
        ));
        for i in 0..o.sample {
            for (j, s) in systems.iter_mut().enumerate() {
                if broken[j] {
                    continue;
                }
                let c = &sample[j][i];
                // Same port range as the fill would use next, so the sample looks like it.
                let t = s.add(c, &[(30000 + i as u16, 80)]);
                if !t.ok {
                    res[j]
                        .errors
                        .push(format!("sample ADD at N={n}: {}", t.error.trim()));
                    continue;
                }
                res[j].add.entry(n).or_default().push(ms(t.elapsed));
            }
            for (j, s) in systems.iter_mut().enumerate() {
                if broken[j] {
                    continue;
                }
                let t = s.del(&sample[j][i]);
                if !t.ok {
                    res[j]
                        .errors
                        .push(format!("sample DEL at N={n}: {}", t.error.trim()));
                    continue;
                }
                res[j].del.entry(n).or_default().push(ms(t.elapsed));
            }
        }
        for (j, s) in systems.iter().enumerate() {
            if s.kind == Kind::Netd && !broken[j] {
                log(format!("endpoints: kernel link floor at N = {n}"));
                // The top of the network's /20, which the fill never reaches.
                let addr = |i: usize| format!("10.90.15.{}/20", 10 + i % 240).parse().unwrap();
                let gw = Ipv4Addr::new(10, 90, 0, 1);
                let f = floor::link_floor(&s.world.host, "nd-bench", gw, addr, o.sample);
                res[j].link_floor.insert(n, f);
            }
        }
        for (s, r) in systems.iter().zip(res.iter()) {
            let a = Summary::of(r.add.get(&n).map(Vec::as_slice).unwrap_or(&[]));
            let d = Summary::of(r.del.get(&n).map(Vec::as_slice).unwrap_or(&[]));
            log(format!(
                "  {:<12} N={n:<5} ADD p50 {:>8.2} p90 {:>8.2} max {:>8.2} | DEL p50 {:>8.2} p90 {:>8.2} max {:>8.2} ms",
                s.kind.name(), a.p50, a.p90, a.max, d.p50, d.p90, d.max
            ));
        }
    }
    let largest = fill.first().map(Vec::len).unwrap_or(0);
    for (s, r) in systems.iter_mut().zip(res.iter_mut()) {
        if s.netd_pid().is_some() && largest > 0 {
            r.restart = Some(timed_restart(&mut s.world, largest));
        }
    }
    // The fill containers' netns go with `fill`; their host-side state goes with each
    // system's host netns (no DEL needed for cleanup).
    log("endpoints: removing container netns");
    drop(fill);
    drop(sample);
}

/// Busy and total jiffies of all CPUs so far (`/proc/stat`, first line).
fn cpu_jiffies() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").expect("reading /proc/stat");
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let total: u64 = fields.iter().sum();
    // idle and iowait
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// Waits until the machine has been at least 85% idle for two 200 ms windows in a row, or
/// 15 s have passed, and says how long that took. A burst fills every CPU, so whatever is
/// still running when it starts (the kernel tears deleted namespaces down in the background)
/// would count against whichever system runs then. In the runs so far every system settled
/// within 0.4 s, and netd's burst measured the same with and without the wait: a guard
/// that says so in the log, not a measured correction.
fn settle() {
    let t0 = Instant::now();
    let mut quiet = 0;
    let (mut busy0, mut total0) = cpu_jiffies();
    while quiet < 2 && t0.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(200));
        let (busy1, total1) = cpu_jiffies();
        let dt = (total1 - total0).max(1);
        let busy = (busy1 - busy0) as f64 / dt as f64;
        quiet = if busy <= 0.15 { quiet + 1 } else { 0 };
        (busy0, total0) = (busy1, total1);
    }
    log(format!(
        "  settled in {:.1} s{}",
        t0.elapsed().as_secs_f64(),
        if quiet < 2 {
            " (gave up waiting: still busy)"
        } else {
            ""
        }
    ));
}

/// Burst phase: for each system in turn (a burst fills the machine, so systems do not share
/// it), `o.burst` ADDs with one published port each started at once, then their DELs at once.
/// Each system's burst starts on a settled machine ([`settle`]).
fn burst_phase(o: &Opts, systems: &mut [System], res: &mut [SysResult]) {
    for (s, r) in systems.iter_mut().zip(res.iter_mut()) {
        log(format!(
            "burst: {} ADDs at once on {}",
            o.burst,
            s.kind.name()
        ));
        let ctrs: Vec<Ctr> = (0..o.burst).map(|i| new_ctr(s.kind, "b", i)).collect();
        let with_ports: Vec<(&Ctr, Vec<Port>)> = ctrs
            .iter()
            .enumerate()
            .map(|(i, c)| (c, vec![(50000 + i as u16, 80)]))
            .collect();
        settle();
        let add = s.add_burst(&with_ports);
        let refs: Vec<&Ctr> = ctrs.iter().collect();
        settle();
        let del = s.del_burst(&refs);
        let failed = add.calls.iter().filter(|t| !t.ok).count();
        let first_error = add
            .calls
            .iter()
            .chain(&del.calls)
            .find(|t| !t.ok)
            .map(|t| t.error.trim().to_string());
        if let Some(e) = &first_error {
            r.errors.push(format!("burst: {e}"));
        }
        let b = BurstResult {
            calls: o.burst,
            failed,
            add_wall_ms: ms(add.wall),
            add_ms: add.calls.iter().map(|t| ms(t.elapsed)).collect(),
            del_wall_ms: ms(del.wall),
            del_ms: del.calls.iter().map(|t| ms(t.elapsed)).collect(),
            first_error,
        };
        let a = Summary::of(&b.add_ms);
        log(format!(
            "  {:<12} all {} attached after {:.1} ms (p50 {:.1} p99 {:.1} ms, {} failed); DELs {:.1} ms",
            s.kind.name(),
            o.burst,
            b.add_wall_ms,
            a.p50,
            a.p99,
            failed,
            b.del_wall_ms
        ));
        r.burst = Some(b);
        drop(ctrs);
    }
}

/// Stops netd (SIGTERM) and starts it again, timing from the spawn until netd says READY=1
/// on a private `NOTIFY_SOCKET` (state loaded, table applied in one batch, links reconciled,
/// socket listening).
fn timed_restart(world: &mut netd_netns_tests::World, endpoints: usize) -> RestartResult {
    use std::os::unix::net::UnixDatagram;
    world.stop_netd(libc::SIGTERM);
    let path = world.dir().join("notify.sock");
    let _ = std::fs::remove_file(&path);
    let sock = UnixDatagram::bind(&path).expect("bind the notify socket");
    sock.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("notify socket timeout");
    let waiter = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            match sock.recv(&mut buf) {
                Ok(n) if String::from_utf8_lossy(&buf[..n]).contains("READY=1") => {
                    return Some(Instant::now())
                }
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    });
    // The bench is single-threaded here apart from the waiter, which does not read the
    // environment, and the variable is removed again right after the spawn.
    std::env::set_var("NOTIFY_SOCKET", &path);
    let t0 = Instant::now();
    world.start_netd();
    std::env::remove_var("NOTIFY_SOCKET");
    let ready = waiter.join().expect("notify waiter");
    let _ = std::fs::remove_file(&path);
    let ready_ms = ready.map(|t| ms(t - t0)).unwrap_or(f64::NAN);
    let status = world.netctl_json(&["status"]);
    let table_elements = status["table_elements"].as_u64();
    log(format!(
        "  netd restart with {endpoints} endpoints: READY=1 after {ready_ms:.1} ms, {} table elements",
        table_elements.map(|x| x.to_string()).unwrap_or("?".into())
    ));
    RestartResult {
        endpoints,
        ready_ms,
        table_elements,
    }
}

/// netd alone (the peers would take hours): `o.scale` endpoints over `o.scale_networks`
/// networks, ADD/DEL sampled at five checkpoints, RSS at each, and a restart at full size.
fn scale_phase(o: &Opts) -> ScaleResult {
    log(format!(
        "scale: netd with {} endpoints over {} networks",
        o.scale, o.scale_networks
    ));
    let mut s = System::with_networks(Kind::Netd, o.scale_networks);
    let mut r = ScaleResult {
        networks: o.scale_networks,
        ..Default::default()
    };
    let checkpoints: Vec<usize> = (1..=5).map(|k| o.scale * k / 5).collect();
    let mut fill: Vec<Ctr> = Vec::with_capacity(o.scale);
    let sample: Vec<Ctr> = (0..o.sample)
        .map(|i| {
            let mut c = new_ctr(Kind::Netd, "t", i);
            c.net = i % o.scale_networks;
            c
        })
        .collect();
    for &n in &checkpoints {
        while fill.len() < n {
            let i = fill.len();
            let mut c = new_ctr(Kind::Netd, "g", i);
            c.net = i % o.scale_networks;
            let t = s.add(&c, &[(10000 + i as u16, 80)]);
            if !t.ok {
                r.errors.push(format!("fill ADD #{i}: {}", t.error.trim()));
                log(format!("  scale fill ADD #{i} failed: {}", t.error));
                return r;
            }
            r.fill.push(ms(t.elapsed));
            fill.push(c);
            if (i + 1).is_multiple_of(500) {
                log(format!("  {} endpoints", i + 1));
            }
        }
        if let Some(pid) = s.netd_pid() {
            r.rss_kib.insert(n, rss_kib(pid));
        }
        for (i, c) in sample.iter().enumerate() {
            let t = s.add(c, &[(30000 + i as u16, 80)]);
            if !t.ok {
                r.errors
                    .push(format!("sample ADD at N={n}: {}", t.error.trim()));
                continue;
            }
            r.add.entry(n).or_default().push(ms(t.elapsed));
            let t = s.del(c);
            if !t.ok {
                r.errors
                    .push(format!("sample DEL at N={n}: {}", t.error.trim()));
                continue;
            }
            r.del.entry(n).or_default().push(ms(t.elapsed));
        }
        // The floor on the first network's bridge (N / networks ports, N containers on
        // the host); addresses from the top of its /22.
        let addr = |i: usize| format!("10.100.3.{}/22", 240 + i % 14).parse().unwrap();
        let gw = Ipv4Addr::new(10, 100, 0, 1);
        r.link_floor.insert(
            n,
            floor::link_floor(&s.world.host, "nd-bench0", gw, addr, o.sample),
        );
        let a = Summary::of(r.add.get(&n).map(Vec::as_slice).unwrap_or(&[]));
        let d = Summary::of(r.del.get(&n).map(Vec::as_slice).unwrap_or(&[]));
        log(format!(
            "  scale N={n:<5} ADD p50 {:>6.2} p90 {:>6.2} | DEL p50 {:>6.2} p90 {:>6.2} ms | RSS {:.1} MiB",
            a.p50,
            a.p90,
            d.p50,
            d.p90,
            *r.rss_kib.get(&n).unwrap_or(&0) as f64 / 1024.0
        ));
    }
    r.restart = Some(timed_restart(&mut s.world, fill.len()));
    // One ADD/DEL after the restart: the rebuilt daemon serves.
    let t = s.add(&sample[0], &[(30000, 80)]);
    if !t.ok {
        r.errors
            .push(format!("ADD after the restart: {}", t.error.trim()));
    } else if !s.del(&sample[0]).ok {
        r.errors.push("DEL after the restart failed".into());
    }
    log("scale: removing container netns");
    drop(fill);
    drop(sample);
    r
}

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|x| x.1.trim().to_string())
        .unwrap_or_default();
    let os = std::fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("PRETTY_NAME="))
        .map(|l| {
            l.trim_start_matches("PRETTY_NAME=")
                .trim_matches('"')
                .to_string()
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let nft = std::process::Command::new("nft")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let iptables = std::process::Command::new("iptables")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    json!({
        "cpu": cpu,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "os": os,
        "kernel": kernel,
        "date": date,
        "loadavg_at_start": load.trim(),
        "nft": nft,
        "iptables": iptables,
    })
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("runner") {
        runner::serve();
        return;
    }
    START.get_or_init(Instant::now);
    let o = parse_args();
    assert_eq!(
        // SAFETY: geteuid(2) has no preconditions and cannot fail.
        unsafe { libc::geteuid() },
        0,
        "bench creates network namespaces: run it as root (scripts/bench.sh)"
    );
    // netd at its default log level, not the harness's debug.
    if std::env::var_os("NETD_LOG").is_none() {
        std::env::set_var("NETD_LOG", "info");
    }
    let mach = machine();
    log(format!("machine: {mach}"));
    let mut kinds = Vec::new();
    let mut skipped = Vec::new();
    for k in &o.systems {
        match System::available(*k) {
            Ok(()) => kinds.push(*k),
            Err(e) => {
                log(format!("skipping {}: {e}", k.name()));
                skipped.push(json!({"system": k.name(), "why": e}));
            }
        }
    }
    let mut systems: Vec<System> = kinds.iter().map(|k| System::new(*k)).collect();
    let netd_bin = systems[0].world.bin("netd");
    let mut res: Vec<SysResult> = kinds
        .iter()
        .map(|k| SysResult {
            version: System::version(*k, &netd_bin),
            ..Default::default()
        })
        .collect();
    for (k, r) in kinds.iter().zip(&res) {
        log(format!("{}: {}", k.name(), r.version));
    }
    // BENCH_STRACE_NETD=FILE: strace netd for the whole run, to find where its time goes.
    // It slows netd down, so never for published numbers.
    let tracer = std::env::var("BENCH_STRACE_NETD").ok().and_then(|file| {
        let pid = systems.iter().find_map(System::netd_pid)?;
        let t = std::process::Command::new("strace")
            .args(["-f", "-tt", "-T", "-o", &file, "-p", &pid.to_string()])
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok();
        std::thread::sleep(Duration::from_millis(500));
        t
    });
    let on = |p: Phase| o.phases.contains(&p);
    if on(Phase::Floor) {
        log("exec floor: VERSION calls");
        for _ in 0..o.sample {
            for (s, r) in systems.iter_mut().zip(res.iter_mut()) {
                let t = s.version_call();
                if t.ok {
                    r.floor.push(ms(t.elapsed));
                } else {
                    r.errors.push(format!("VERSION: {}", t.error.trim()));
                }
            }
        }
    }
    if on(Phase::Ports) {
        port_phase(&o, &mut systems, &mut res);
    }
    if on(Phase::Burst) {
        burst_phase(&o, &mut systems, &mut res);
    }
    if on(Phase::Ports) || on(Phase::Burst) {
        // Restart netd (its table is rebuilt from the now empty state) so that its memory
        // figures at N endpoints do not carry the port phase's high-water mark.
        for (s, r) in systems.iter_mut().zip(res.iter_mut()) {
            if let Some(pid) = s.netd_pid() {
                r.port_phase_mem = Some(mem_kib(pid));
                s.world.restart_netd(libc::SIGTERM);
            }
        }
    }
    if on(Phase::Endpoints) {
        endpoint_phase(&o, &mut systems, &mut res);
    }
    if let Some(mut t) = tracer {
        // SAFETY: SIGINT to our own strace child, which then detaches from netd.
        unsafe { libc::kill(t.id() as libc::pid_t, libc::SIGINT) };
        let _ = t.wait();
    }
    log("removing the systems' namespaces");
    drop(systems);
    let scale = (on(Phase::Scale) && kinds.contains(&Kind::Netd)).then(|| scale_phase(&o));
    let load_end = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let total = elapsed();
    let mut mach = mach;
    mach["loadavg_at_end"] = json!(load_end.trim());
    mach["bench_seconds"] = json!(total.round());
    std::fs::create_dir_all(&o.out).expect("create output dir");
    if let (Some(sc), Some(i)) = (scale, kinds.iter().position(|k| *k == Kind::Netd)) {
        res[i].scale = Some(sc);
    }
    let doc = report::json(&o, &mach, &kinds, &res, &skipped);
    let jpath = o.out.join("results.json");
    std::fs::write(&jpath, serde_json::to_string_pretty(&doc).unwrap() + "\n")
        .expect("write results.json");
    let md = report::markdown(&o, &mach, &kinds, &res, &skipped);
    std::fs::write(o.out.join("results.md"), &md).expect("write results.md");
    let png = o.out.join("add-latency.png");
    if let Err(e) = plot::add_latency(&png, &o, &kinds, &res) {
        log(format!("plot failed: {e}"));
    }
    println!("{md}");
    log(format!(
        "wrote {}, {} and {}",
        jpath.display(),
        o.out.join("results.md").display(),
        png.display()
    ));
}
