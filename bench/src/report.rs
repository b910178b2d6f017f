//! The markdown table and the JSON file.

use serde_json::{json, Value};

use crate::stats::Summary;
use crate::systems::Kind;
use crate::{fmt_opt, Opts, RestartResult, SysResult};

fn sum(v: Option<&Vec<f64>>) -> Summary {
    Summary::of(v.map(Vec::as_slice).unwrap_or(&[]))
}

fn f2(x: f64) -> String {
    if x.is_nan() {
        "—".into()
    } else if x >= 100.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.2}")
    }
}

fn ratio(a: f64, b: f64) -> String {
    if a.is_nan() || b.is_nan() || b == 0.0 {
        "—".into()
    } else {
        format!("{:.1}×", a / b)
    }
}

fn sj(s: Summary) -> Value {
    let n = |x: f64| if x.is_nan() { Value::Null } else { json!(x) };
    json!({"n": s.n, "p50_ms": n(s.p50), "p90_ms": n(s.p90), "max_ms": n(s.max)})
}

pub fn json(o: &Opts, mach: &Value, kinds: &[Kind], res: &[SysResult], skipped: &[Value]) -> Value {
    let mut systems = serde_json::Map::new();
    for (k, r) in kinds.iter().zip(res) {
        let mut at = serde_json::Map::new();
        for n in &o.sizes {
            at.insert(
                n.to_string(),
                json!({
                    "add": sj(sum(r.add.get(n))),
                    "del": sj(sum(r.del.get(n))),
                    "add_samples_ms": r.add.get(n),
                    "del_samples_ms": r.del.get(n),
                }),
            );
        }
        let ports: serde_json::Map<String, Value> = r
            .ports
            .iter()
            .map(|(k, p)| {
                (
                    k.to_string(),
                    json!({
                        "apply_add_ms": p.apply_add_ms,
                        "last_port_answers_ms": p.last_port_ms,
                        "after_add_exit_ms": p.after_add_ms,
                        "one_more_mapping_add_ms": p.one_more_add_ms,
                        "one_more_mapping_del_ms": p.one_more_del_ms,
                        "del_ms": p.del_ms,
                        "conn_per_s_first": p.rate_first,
                        "conn_per_s_last": p.rate_last,
                        "skipped": p.skipped,
                    }),
                )
            })
            .collect();
        systems.insert(
            k.name().into(),
            json!({
                "version": r.version,
                "endpoints": at,
                "fill_add_ms": r.fill,
                "exec_floor": sj(Summary::of(&r.floor)),
                "link_floor": r.link_floor.iter().map(|(k, v)| (k.to_string(), sj(Summary::of(v)))).collect::<serde_json::Map<_, _>>(),
                "ports": ports,
                "rss_kib": r.rss_kib.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
                "cpu_ms_per_add": r.cpu_ms_per_add.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
                "errors": r.errors,
                "port_phase_mem_kib": r.port_phase_mem.map(|(rss, hwm)| json!({"rss": rss, "hwm": hwm})),
                "burst": r.burst.as_ref().map(|b| json!({
                    "calls": b.calls,
                    "failed": b.failed,
                    "add_all_attached_ms": b.add_wall_ms,
                    "add": sj(Summary::of(&b.add_ms)),
                    "add_p99_ms": Summary::of(&b.add_ms).p99,
                    "add_samples_ms": b.add_ms,
                    "del_all_done_ms": b.del_wall_ms,
                    "del": sj(Summary::of(&b.del_ms)),
                    "del_p99_ms": Summary::of(&b.del_ms).p99,
                    "del_samples_ms": b.del_ms,
                    "first_error": b.first_error,
                })),
                "restart": r.restart.as_ref().map(restart_json),
                "scale": r.scale.as_ref().map(|sc| json!({
                    "networks": sc.networks,
                    "checkpoints": sc.add.keys().map(|n| (n.to_string(), json!({
                        "add": sj(sum(sc.add.get(n))),
                        "del": sj(sum(sc.del.get(n))),
                        "add_samples_ms": sc.add.get(n),
                        "del_samples_ms": sc.del.get(n),
                        "rss_kib": sc.rss_kib.get(n),
                    }))).collect::<serde_json::Map<_, _>>(),
                    "fill_add_ms": sc.fill,
                    "restart": sc.restart.as_ref().map(restart_json),
                    "errors": sc.errors,
                })),
            }),
        );
    }
    json!({
        "machine": mach,
        "options": {"sizes": o.sizes, "sample": o.sample, "ports": o.ports, "rate_secs": o.rate_secs, "cni_max_ports": o.cni_max_ports, "burst": o.burst, "scale": o.scale, "scale_networks": o.scale_networks},
        "skipped": skipped,
        "systems": systems,
    })
}

fn restart_json(r: &RestartResult) -> Value {
    json!({"endpoints": r.endpoints, "ready_ms": r.ready_ms, "table_elements": r.table_elements})
}

/// The best peer (lowest value of `f`) other than netd, with its value.
fn best_peer(
    kinds: &[Kind],
    res: &[SysResult],
    f: impl Fn(&SysResult) -> f64,
) -> Option<(Kind, f64)> {
    kinds
        .iter()
        .zip(res)
        .filter(|(k, _)| **k != Kind::Netd)
        .map(|(k, r)| (*k, f(r)))
        .filter(|(_, v)| !v.is_nan())
        .min_by(|a, b| a.1.total_cmp(&b.1))
}

fn burst_md(kinds: &[Kind], res: &[SysResult]) -> String {
    let mut m = String::new();
    if !res.iter().any(|r| r.burst.is_some()) {
        return m;
    }
    let netd = kinds
        .iter()
        .zip(res)
        .find(|(k, _)| **k == Kind::Netd)
        .and_then(|(_, r)| r.burst.as_ref());
    let calls = res
        .iter()
        .find_map(|r| r.burst.as_ref())
        .map(|b| b.calls)
        .unwrap_or(0);
    m += &format!("\n### Burst: {calls} ADDs started at once, then their {calls} DELs at once\n\n");
    m += "All calls of a system are released together by the runner (one thread each, one port each); each call's time runs from that common start to its own end, so it includes waiting behind the others. Systems run one after the other.\n\n";
    m += "| system | all attached | ADD p50 | ADD p99 | failed | all DELs done | DEL p99 | all attached / netd |\n";
    m += "|---|---:|---:|---:|---:|---:|---:|---:|\n";
    for (k, r) in kinds.iter().zip(res) {
        let Some(b) = &r.burst else { continue };
        let a = Summary::of(&b.add_ms);
        let d = Summary::of(&b.del_ms);
        m += &format!(
            "| {} | {} ms | {} ms | {} ms | {} | {} ms | {} ms | {} |\n",
            k.name(),
            f2(b.add_wall_ms),
            f2(a.p50),
            f2(a.p99),
            b.failed,
            f2(b.del_wall_ms),
            f2(d.p99),
            netd.map(|n| ratio(b.add_wall_ms, n.add_wall_ms))
                .unwrap_or("—".into()),
        );
    }
    m
}

fn scale_md(r: &SysResult) -> String {
    let mut m = String::new();
    if let Some(rs) = &r.restart {
        m += &format!(
            "\nnetd restart (SIGTERM, start) with {} endpoints attached: READY=1 {} ms after the spawn ({} table elements).\n",
            rs.endpoints,
            f2(rs.ready_ms),
            rs.table_elements.map(|x| x.to_string()).unwrap_or("?".into())
        );
    }
    let Some(sc) = &r.scale else { return m };
    let total = sc.fill.len();
    m += &format!(
        "\n### netd at scale: {total} endpoints over {} networks (one port each)\n\n",
        sc.networks
    );
    m += "ADD/DEL sampled at each checkpoint (the sample's containers spread over the networks), VmRSS at the checkpoint; floor = the kernel link work of one attach on the first network's bridge (as in \"The floor under an ADD at N\") + the exec floor.\n\n";
    m += "| N | ADD p50 | ADD p90 | DEL p50 | DEL p90 | floor | VmRSS |\n|---:|---:|---:|---:|---:|---:|---:|\n";
    let exec = Summary::of(&r.floor).p50;
    for (n, v) in &sc.add {
        let a = Summary::of(v);
        let d = sum(sc.del.get(n));
        let floor = sc
            .link_floor
            .get(n)
            .map(|v| f2(Summary::of(v).p50 + exec))
            .unwrap_or("—".into());
        m += &format!(
            "| {n} | {} | {} | {} | {} | {floor} | {} |\n",
            f2(a.p50),
            f2(a.p90),
            f2(d.p50),
            f2(d.p90),
            sc.rss_kib
                .get(n)
                .map(|k| format!("{:.1} MiB", *k as f64 / 1024.0))
                .unwrap_or("—".into())
        );
    }
    if let Some(rs) = &sc.restart {
        m += &format!(
            "\nRestart at {} endpoints: READY=1 {} ms after the spawn ({} table elements).\n",
            rs.endpoints,
            f2(rs.ready_ms),
            rs.table_elements
                .map(|x| x.to_string())
                .unwrap_or("?".into())
        );
    }
    for e in sc.errors.iter().take(5) {
        m += &format!("- error: `{}`\n", e.replace('`', "'").replace('\n', " "));
    }
    m
}

pub fn markdown(
    o: &Opts,
    mach: &Value,
    kinds: &[Kind],
    res: &[SysResult],
    skipped: &[Value],
) -> String {
    let mut m = String::new();
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    m += &format!(
        "Run of {} on {} ({} CPUs), {}, kernel {}, {}, {}; load average at start {}, at end {}; {} s.\n\n",
        s(&mach["date"]),
        s(&mach["cpu"]),
        mach["cpus"],
        s(&mach["os"]),
        s(&mach["kernel"]),
        s(&mach["nft"]),
        s(&mach["iptables"]),
        s(&mach["loadavg_at_start"]),
        s(&mach["loadavg_at_end"]),
        mach["bench_seconds"],
    );
    for (k, r) in kinds.iter().zip(res) {
        m += &format!("- {}: {}\n", k.name(), r.version);
    }
    for sk in skipped {
        m += &format!("- {} skipped: {}\n", s(&sk["system"]), s(&sk["why"]));
    }
    let netd = kinds.iter().position(|k| *k == Kind::Netd);
    m += &format!(
        "\n### CNI ADD and DEL with N endpoints attached (ms, runtime side, {} samples each)\n\n",
        o.sample
    );
    m += "| N | system | ADD p50 | ADD p90 | ADD max | DEL p50 | DEL p90 | DEL max | ADD p50 / netd | DEL p50 / netd |\n";
    m += "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|\n";
    for n in &o.sizes {
        for (k, r) in kinds.iter().zip(res) {
            let a = sum(r.add.get(n));
            let d = sum(r.del.get(n));
            let (ra, rd) = match netd {
                Some(i) => (
                    ratio(a.p50, sum(res[i].add.get(n)).p50),
                    ratio(d.p50, sum(res[i].del.get(n)).p50),
                ),
                None => ("—".into(), "—".into()),
            };
            m += &format!(
                "| {n} | {} | {} | {} | {} | {} | {} | {} | {ra} | {rd} |\n",
                k.name(),
                f2(a.p50),
                f2(a.p90),
                f2(a.max),
                f2(d.p50),
                f2(d.p90),
                f2(d.max)
            );
        }
    }
    m += "\nExec floor (p50 of a CNI `VERSION` call on each plugin of the chain, or `netavark version`): ";
    m += &kinds
        .iter()
        .zip(res)
        .map(|(k, r)| format!("{} {} ms", k.name(), f2(Summary::of(&r.floor).p50)))
        .collect::<Vec<_>>()
        .join(", ");
    m += ".\n";
    if let Some(i) = netd.filter(|i| !res[*i].link_floor.is_empty()) {
        m += &floor_md(&res[i]);
    }
    if let (Some(lo), Some(hi)) = (o.sizes.first(), o.sizes.last()) {
        m += &format!("\n### Slope: p50 at N = {hi} over p50 at N = {lo}\n\n");
        m += "| system | ADD | DEL |\n|---|---:|---:|\n";
        for (k, r) in kinds.iter().zip(res) {
            m += &format!(
                "| {} | {} | {} |\n",
                k.name(),
                ratio(sum(r.add.get(hi)).p50, sum(r.add.get(lo)).p50),
                ratio(sum(r.del.get(hi)).p50, sum(r.del.get(lo)).p50),
            );
        }
    }
    let ports_ran = res.iter().any(|r| !r.ports.is_empty());
    if ports_ran {
        m += "\n### Published ports on one container\n\n";
        m += "apply = the CNI ADD carrying all the mappings; last port = from that ADD's start until a TCP connect from the external netns to the last host port succeeds; +1 ADD = another container's ADD with one mapping while these are published; conn/s = sequential new TCP connections per second from the external netns through DNAT to the first / last host port.\n\n";
        m += "| ports | system | apply | last port answers | of which after ADD exit | +1 ADD | DEL | conn/s first | conn/s last | last / first |\n";
        m += "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|\n";
        for p in &o.ports {
            for (k, r) in kinds.iter().zip(res) {
                let Some(pr) = r.ports.get(p) else {
                    m += &format!("| {p} | {} | failed | | | | | | | |\n", k.name());
                    continue;
                };
                if let Some(why) = &pr.skipped {
                    m += &format!("| {p} | {} | {why} | | | | | | | |\n", k.name());
                    continue;
                }
                let lf = match (pr.rate_first, pr.rate_last) {
                    (Some(f), Some(l)) if f > 0.0 => format!("{:.3}", l / f),
                    _ => "—".into(),
                };
                m += &format!(
                    "| {p} | {} | {} | {} | {} | {} | {} | {} | {} | {lf} |\n",
                    k.name(),
                    fmt_opt(pr.apply_add_ms, "ms"),
                    fmt_opt(pr.last_port_ms, "ms"),
                    fmt_opt(pr.after_add_ms, "ms"),
                    fmt_opt(pr.one_more_add_ms, "ms"),
                    fmt_opt(pr.del_ms, "ms"),
                    pr.rate_first
                        .map(|x| format!("{x:.0}"))
                        .unwrap_or("—".into()),
                    pr.rate_last
                        .map(|x| format!("{x:.0}"))
                        .unwrap_or("—".into()),
                );
            }
        }
    }
    if let Some(i) = netd {
        let r = &res[i];
        m += "\n### netd's resources\n\n| N | VmRSS | CPU per ADD (fill ADDs up to N) |\n|---:|---:|---:|\n";
        for n in &o.sizes {
            m += &format!(
                "| {n} | {} | {} |\n",
                r.rss_kib
                    .get(n)
                    .map(|k| format!("{:.1} MiB", *k as f64 / 1024.0))
                    .unwrap_or("—".into()),
                r.cpu_ms_per_add
                    .get(n)
                    .map(|c| format!("{c:.2} ms"))
                    .unwrap_or("—".into()),
            );
        }
        if let Some((rss, hwm)) = r.port_phase_mem {
            m += &format!(
                "\nAfter the {} (largest: {} ports): VmRSS {:.1} MiB, VmHWM {:.1} MiB; netd was then restarted for the endpoint phase.\n",
                match (ports_ran, r.burst.is_some()) {
                    (true, true) => "port and burst phases",
                    (true, false) => "port phase",
                    _ => "burst phase",
                },
                r.ports.keys().last().unwrap_or(&0),
                rss as f64 / 1024.0,
                hwm as f64 / 1024.0
            );
        }
        m += &burst_md(kinds, res);
        m += &scale_md(r);
        m += &goals(o, kinds, res, i);
    }
    for (k, r) in kinds.iter().zip(res) {
        if !r.errors.is_empty() {
            m += &format!("\n{} errors ({}):\n", k.name(), r.errors.len());
            for e in r.errors.iter().take(5) {
                let e: String = e.chars().take(300).collect();
                m += &format!("- `{}`\n", e.replace('`', "'").replace('\n', " "));
            }
        }
    }
    m
}

/// The floor under netd's ADD at each N: the kernel's link work in process plus the exec
/// floor (bench/src/floor.rs says what is measured).
fn floor_md(r: &SysResult) -> String {
    let exec = Summary::of(&r.floor).p50;
    let mut m = String::from(
        "\n### The floor under an ADD at N\n\nkernel link work = the link calls netd-cni makes for one ADD (veth pair with the peer in a new netns, host end made an up, flagged, marked port of the bridge, container end renamed, addressed, routed, up), in one process on the bridge holding the N endpoints: no exec, no netd, no disk (p50 of the same number of samples). floor = that + the exec floor above. Any plugin that is exec'd per ADD and attaches a veth to a Linux bridge pays at least the floor.\n\n| N | kernel link work | + exec floor | = floor | netd ADD p50 | netd ADD − floor |\n|---:|---:|---:|---:|---:|---:|\n",
    );
    for (n, v) in &r.link_floor {
        let k = Summary::of(v).p50;
        let add = sum(r.add.get(n)).p50;
        m += &format!(
            "| {n} | {} ms | {} ms | {} ms | {} ms | {} ms |\n",
            f2(k),
            f2(exec),
            f2(k + exec),
            f2(add),
            f2(add - k - exec)
        );
    }
    m
}

fn goals(o: &Opts, kinds: &[Kind], res: &[SysResult], i: usize) -> String {
    let r = &res[i];
    let mut rows: Vec<(String, String, Option<bool>)> = Vec::new();
    let big = *o.sizes.last().unwrap_or(&0);
    let small = *o.sizes.first().unwrap_or(&0);
    let a = sum(r.add.get(&big)).p50;
    let d = sum(r.del.get(&big)).p50;
    let ok = |x: f64, lim: f64| (!x.is_nan()).then_some(x <= lim);
    let floor_at = |n: usize| {
        r.link_floor
            .get(&n)
            .map(|v| Summary::of(v).p50 + Summary::of(&r.floor).p50)
    };
    let floor = floor_at(big);
    rows.push((
        format!("ADD p50 ≤ 3 ms at N = {big}"),
        match floor {
            Some(f) => format!("{a:.2} ms (floor {f:.2} ms)"),
            None => format!("{a:.2} ms"),
        },
        ok(a, 3.0),
    ));
    rows.push((
        format!("DEL p50 ≤ 3 ms at N = {big}"),
        format!("{d:.2} ms"),
        ok(d, 3.0),
    ));
    let sa = a / sum(r.add.get(&small)).p50;
    let sd = d / sum(r.del.get(&small)).p50;
    rows.push((
        format!("ADD p50 at N = {big} within 1.2× of N = {small}"),
        match (floor_at(small), floor_at(big)) {
            (Some(lo), Some(hi)) => format!("{sa:.2}× (floor {:.2}×)", hi / lo),
            _ => format!("{sa:.2}×"),
        },
        ok(sa, 1.2),
    ));
    rows.push((
        format!("DEL p50 at N = {big} within 1.2× of N = {small}"),
        format!("{sd:.2}×"),
        ok(sd, 1.2),
    ));
    let mut sizes: Vec<usize> = o.sizes.iter().copied().filter(|n| *n >= 100).collect();
    if sizes.is_empty() {
        sizes.extend(o.sizes.last());
    }
    for n in sizes {
        for (what, mine, pick) in [
            (
                "ADD",
                sum(r.add.get(&n)).p50,
                (|r: &SysResult, n: usize| sum(r.add.get(&n)).p50) as fn(&SysResult, usize) -> f64,
            ),
            ("DEL", sum(r.del.get(&n)).p50, |r: &SysResult, n: usize| {
                sum(r.del.get(&n)).p50
            }),
        ] {
            if let Some((k, theirs)) = best_peer(kinds, res, |pr| pick(pr, n)) {
                let x = theirs / mine;
                rows.push((
                    format!(
                        "{what} ≥ 10× faster than the best peer at N = {n} ({})",
                        k.name()
                    ),
                    format!("{x:.1}×"),
                    (!x.is_nan()).then_some(x >= 10.0),
                ));
            }
        }
    }
    if let Some(b) = &r.burst {
        if let Some((k, theirs)) = best_peer(kinds, res, |pr| {
            pr.burst.as_ref().map(|b| b.add_wall_ms).unwrap_or(f64::NAN)
        }) {
            let x = theirs / b.add_wall_ms;
            rows.push((
                format!(
                    "burst of {}: all attached ≥ 10× sooner than the best peer ({})",
                    b.calls,
                    k.name()
                ),
                format!("{x:.1}× ({:.0} ms)", b.add_wall_ms),
                (!x.is_nan()).then_some(x >= 10.0),
            ));
        }
        if let Some((k, theirs)) = best_peer(kinds, res, |pr| {
            pr.burst
                .as_ref()
                .map(|b| Summary::of(&b.add_ms).p99)
                .unwrap_or(f64::NAN)
        }) {
            let mine = Summary::of(&b.add_ms).p99;
            let x = theirs / mine;
            rows.push((
                format!(
                    "burst of {}: ADD p99 ≥ 10× below the best peer's ({})",
                    b.calls,
                    k.name()
                ),
                format!("{x:.1}× ({mine:.0} ms)"),
                (!x.is_nan()).then_some(x >= 10.0),
            ));
        }
    }
    let pmax = *o.ports.last().unwrap_or(&0);
    if let Some(p) = r.ports.get(&pmax) {
        let t = p.last_port_ms.unwrap_or(f64::NAN);
        rows.push((
            format!("{pmax} ports: the last answers ≤ 30 ms after the ADD starts"),
            format!("{t:.1} ms"),
            ok(t, 30.0),
        ));
        if let (Some(f), Some(l)) = (p.rate_first, p.rate_last) {
            rows.push((
                format!("conn/s at port #{pmax} ≥ 0.9× port #1"),
                format!("{:.3}×", l / f),
                Some(l >= 0.9 * f),
            ));
        }
    }
    if let Some(kib) = r.rss_kib.get(&big) {
        let mib = *kib as f64 / 1024.0;
        rows.push((
            format!("netd RSS ≤ 20 MiB at N = {big}"),
            format!("{mib:.1} MiB"),
            ok(mib, 20.0),
        ));
    }
    if let Some(sc) = &r.scale {
        let first = sc.add.keys().next().copied();
        let last = sc.add.keys().last().copied();
        if let (Some(f), Some(l)) = (first, last) {
            let x = sum(sc.add.get(&l)).p50 / sum(sc.add.get(&f)).p50;
            let exec = Summary::of(&r.floor).p50;
            let floor = |n: usize| sc.link_floor.get(&n).map(|v| Summary::of(v).p50 + exec);
            rows.push((
                format!(
                    "scale: ADD p50 at N = {l} within 1.2× of N = {f} ({} networks)",
                    sc.networks
                ),
                match (floor(f), floor(l)) {
                    (Some(a), Some(b)) => format!("{x:.2}× (floor {:.2}×)", b / a),
                    _ => format!("{x:.2}×"),
                },
                ok(x, 1.2),
            ));
            if let Some(kib) = sc.rss_kib.get(&l) {
                let mib = *kib as f64 / 1024.0;
                rows.push((
                    format!("netd RSS ≤ 20 MiB at N = {l}"),
                    format!("{mib:.1} MiB"),
                    ok(mib, 20.0),
                ));
            }
        }
        if let Some(rs) = &sc.restart {
            rows.push((
                format!("restart with {} endpoints ready in ≤ 1 s", rs.endpoints),
                format!("{:.0} ms", rs.ready_ms),
                ok(rs.ready_ms, 1000.0),
            ));
        }
    }
    let mut m = String::from("\n### Goals\n\n| goal | measured | met |\n|---|---:|:---:|\n");
    for (g, v, okv) in rows {
        let mark = match okv {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "—",
        };
        m += &format!("| {g} | {v} | {mark} |\n");
    }
    m
}
