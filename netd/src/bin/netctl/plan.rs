//! `netctl plan`: the table netd would write, in `nft list table` form, for a state directory
//! or for the running daemon's state, and `--diff` against the live table. The golden scenario
//! tests (`nft-templates/scenarios/`) run this command, so what users see is what is tested.

use std::path::PathBuf;
use std::process::Command;

use netd::api::Client;
use netd::model::{Endpoint, Network};
use netd::{plan, ruleset, store::Store};

use crate::Failure;

#[derive(clap::Args)]
pub struct PlanArgs {
    /// Plan from this state directory (netd's --state-dir) instead of asking the daemon.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Compare with the live table (`nft list table inet TABLE`): lines only in the plan are
    /// marked `+`, lines only in the live table `-`. Exit 1 when they differ.
    #[arg(long)]
    diff: bool,
    /// The table's name (netd's --table).
    #[arg(long, default_value = ruleset::DEFAULT_TABLE)]
    table: String,
}

pub fn run(client: &Client, args: PlanArgs) -> Result<(), Failure> {
    let (networks, endpoints) = match &args.state_dir {
        Some(dir) => from_state_dir(dir)?,
        None => (client.networks()?, client.endpoints()?),
    };
    let text = render(&args.table, &networks, &endpoints);
    if !args.diff {
        print!("{text}");
        return Ok(());
    }
    let live = live_table(&args.table)?;
    // nft lists the port-range sets in the order their elements were added: compare the
    // element lists sorted, so that only a different element is a difference.
    let changes = line_diff(
        &ruleset::sort_elements(&text),
        &ruleset::sort_elements(&live),
    );
    if changes.is_empty() {
        println!("the live table matches the plan");
        return Ok(());
    }
    for c in &changes {
        println!("{c}");
    }
    Err(Failure::Silent)
}

/// The whole table as `nft list table inet TABLE` prints it for these networks and endpoints.
pub fn render(table: &str, networks: &[Network], endpoints: &[Endpoint]) -> String {
    let desired = plan::desired(networks, endpoints);
    let text = ruleset::render_template(ruleset::TEMPLATE, &desired);
    // The template names the default table; netd writes the same table under its --table.
    match text.strip_prefix(&format!("table inet {} {{", ruleset::DEFAULT_TABLE)) {
        Some(rest) => format!("table inet {table} {{{rest}"),
        None => text,
    }
}

fn from_state_dir(dir: &std::path::Path) -> Result<(Vec<Network>, Vec<Endpoint>), Failure> {
    // A plan must not write: Store::read takes the snapshot files and the journal's
    // records as they are (netd may be running). Check first for a clearer message.
    if !dir.join("networks").is_dir() {
        return Err(Failure::Other(format!(
            "{} is not a netd state directory (no networks/ in it)",
            dir.display()
        )));
    }
    let loaded =
        Store::read(dir).map_err(|e| Failure::Other(format!("reading {}: {e}", dir.display())))?;
    Ok((loaded.networks, loaded.endpoints))
}

fn live_table(table: &str) -> Result<String, Failure> {
    let out = Command::new("nft")
        .args(["list", "table", "inet", table])
        .output()
        .map_err(|e| Failure::Other(format!("running nft: {e} (install the nftables package)")))?;
    if !out.status.success() {
        return Err(Failure::Other(format!(
            "nft list table inet {table}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Lines of `want` missing from `have` (`+`) and lines of `have` missing from `want` (`-`), in
/// order, each compared as a multiset so repeated lines (`}`, blank lines) count.
fn line_diff(want: &str, have: &str) -> Vec<String> {
    use std::collections::HashMap;
    fn counts(s: &str) -> HashMap<&str, usize> {
        let mut m = HashMap::new();
        for l in s.lines() {
            *m.entry(l).or_default() += 1;
        }
        m
    }
    let (mut w, mut h) = (counts(want), counts(have));
    let mut out = Vec::new();
    for l in want.lines() {
        let left = h.get_mut(l).filter(|n| **n > 0);
        match left {
            Some(n) => *n -= 1,
            None => out.push(format!("+{l}")),
        }
    }
    for l in have.lines() {
        let left = w.get_mut(l).filter(|n| **n > 0);
        match left {
            Some(n) => *n -= 1,
            None => out.push(format!("-{l}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_names_both_sides_and_counts_repeats() {
        assert!(line_diff("a\n}\n}\n", "a\n}\n}\n").is_empty());
        assert_eq!(line_diff("a\nb\n}\n", "a\nc\n}\n}\n"), ["+b", "-c", "-}"]);
    }

    #[test]
    fn render_uses_the_table_name() {
        let t = render("other", &[], &[]);
        assert!(t.starts_with("table inet other {"), "{t}");
        assert!(render("netd", &[], &[]).starts_with("table inet netd {"));
    }
}
