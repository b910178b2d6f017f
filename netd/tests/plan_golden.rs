//! Golden scenarios: each directory under `nft-templates/scenarios/` is a small netd state
//! directory (networks and endpoints as netd stores them), and `NAME.nft` beside it is what
//! `netctl plan --state-dir` prints for it, i.e. the table netd writes for that state. A change
//! to a rule, a set or the planner shows up here as a diff to review. Regenerate with
//! `NETD_UPDATE_GOLDEN=1 cargo test -p netd --test plan_golden`.
//!
//! Needs no root: the renderer is pure. `nft_netns.rs` and the netns template test hold the
//! kernel's own `nft list` output against the same renderer.

use std::path::{Path, PathBuf};
use std::process::Command;

fn scenarios_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../nft-templates/scenarios")
}

fn plan(state: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_netctl"))
        .args(["plan", "--state-dir"])
        .arg(state)
        .output()
        .expect("run netctl");
    assert!(
        out.status.success(),
        "netctl plan --state-dir {}: {}",
        state.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

#[test]
fn every_scenario_renders_its_golden_table() {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(scenarios_dir())
        .expect("nft-templates/scenarios")
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    // The matrix below is what the scenarios must keep covering.
    let names: Vec<String> = dirs
        .iter()
        .map(|d| d.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for must in [
        "empty",
        "nat-icc",
        "icc-off",
        "internal",
        "dual-stack-nat",
        "ipv6-routed",
        "ipv4-routed",
        "isolated",
        "two-networks",
        "ipv6-only",
        "port-ranges",
    ] {
        assert!(
            names.iter().any(|n| n == must),
            "scenario {must} is missing"
        );
    }
    let update = std::env::var_os("NETD_UPDATE_GOLDEN").is_some();
    let mut stale = Vec::new();
    for dir in &dirs {
        let have = plan(dir);
        assert!(
            !have.contains("@elements"),
            "{}: unfilled template",
            dir.display()
        );
        let golden = dir.with_extension("nft");
        if update {
            std::fs::write(&golden, &have).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&golden).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; create it with NETD_UPDATE_GOLDEN=1",
                golden.display()
            )
        });
        if want != have {
            stale.push(format!(
                "{} differs\n--- want ---\n{want}\n--- have ---\n{have}",
                golden.display()
            ));
        }
    }
    assert!(
        stale.is_empty(),
        "{}\n(if intended: NETD_UPDATE_GOLDEN=1 cargo test -p netd --test plan_golden)",
        stale.join("\n")
    );
}

#[test]
fn scenarios_differ_where_their_options_differ() {
    // A renderer that ignored its input would still match goldens written by itself; these
    // check that each option leaves its mark on the table.
    let s = |n: &str| plan(&scenarios_dir().join(n));
    let icc_on = s("nat-icc");
    assert!(
        icc_on.contains("\"nd-web\" . \"nd-web\" : accept"),
        "{icc_on}"
    );
    let icc_off = s("icc-off");
    assert!(
        icc_off.contains("\"nd-quiet\" . \"nd-quiet\" : goto icc_off"),
        "{icc_off}"
    );
    assert!(icc_on.contains("tcp . 8080 : 10.89.0.2 . 80"), "{icc_on}");
    let internal = s("internal");
    assert!(internal.contains("set sealed"), "{internal}");
    assert!(internal.contains("elements = { \"nd-db\" }"), "{internal}");
    let routed6 = s("ipv6-routed");
    assert!(
        routed6.contains("\"nd-edge\" : goto to_routed"),
        "{routed6}"
    );
    assert!(routed6.contains("fd00:89:4::2 . tcp . 80"), "{routed6}");
    // IPv4 of that network is masqueraded, IPv6 is not.
    let masq = |t: &str, set: &str| {
        let start = t.find(&format!("set {set} {{")).expect(set);
        let end = start + t[start..].find("\n\t}").unwrap();
        t[start..end].to_string()
    };
    assert!(
        masq(&routed6, "masq4").contains("10.89.4.0/24"),
        "{routed6}"
    );
    assert!(!masq(&routed6, "masq6").contains("elements"), "{routed6}");
    assert!(masq(&s("dual-stack-nat"), "masq6").contains("fd00:89:3::/64"));
    assert_eq!(s("empty").matches("elements = ").count(), 0);
}
