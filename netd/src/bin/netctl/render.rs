//! Readable tables for netctl's default output format.

use std::path::Path;

use netd::api::Status;
use netd::model::{Endpoint, Network};

/// Left-aligned columns, three spaces apart, no trailing blanks.
pub fn table(rows: Vec<Vec<String>>) -> String {
    let cols = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..cols)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, cell)| format!("{cell:<w$}", w = widths[i]))
            .collect();
        out.push_str(line.join("   ").trim_end());
        out.push('\n');
    }
    out
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

fn header(cells: &[&str]) -> Vec<String> {
    cells.iter().map(|c| c.to_string()).collect()
}

pub fn networks(nets: &[Network], eps: &[Endpoint]) -> String {
    let mut rows = vec![header(&[
        "NAME",
        "BRIDGE",
        "IPV4",
        "IPV6",
        "MODE",
        "OPTIONS",
        "ENDPOINTS",
    ])];
    for n in nets {
        let mut options = Vec::new();
        if n.internal {
            options.push("internal");
        }
        if !n.icc {
            options.push("icc=false");
        }
        let mode = match (n.subnet4.is_some(), n.subnet6.is_some()) {
            (true, true) => format!("{}/{}", n.gateway_mode4, n.gateway_mode6),
            (false, true) => n.gateway_mode6.to_string(),
            _ => n.gateway_mode4.to_string(),
        };
        rows.push(vec![
            n.name.clone(),
            n.bridge.clone(),
            opt(n.subnet4),
            opt(n.subnet6),
            mode,
            if options.is_empty() {
                "-".into()
            } else {
                options.join(",")
            },
            eps.iter()
                .filter(|e| e.network == n.name)
                .count()
                .to_string(),
        ]);
    }
    table(rows)
}

/// What `network create` chose, one family per line, so the gateway modes in effect are never
/// a surprise (`--routed` routes IPv6 only).
pub fn created(n: &Network) -> String {
    let mut out = format!("{} (bridge {})\n", n.name, n.bridge);
    let families = [
        ("IPv4", n.subnet4.map(|s| s.to_string()), n.gateway_mode4),
        ("IPv6", n.subnet6.map(|s| s.to_string()), n.gateway_mode6),
    ];
    for (family, subnet, mode) in families {
        if let Some(subnet) = subnet {
            let mode = if n.internal {
                "internal".to_string()
            } else {
                format!("gateway mode {mode}")
            };
            out.push_str(&format!("  {family}  {subnet}  {mode}\n"));
        }
    }
    out
}

pub fn endpoints(eps: &[Endpoint]) -> String {
    let mut rows = vec![header(&[
        "CONTAINER",
        "IFNAME",
        "NETWORK",
        "IPV4",
        "IPV6",
        "PORTS",
    ])];
    for e in eps {
        let ports: Vec<String> = e
            .ports
            .iter()
            .map(|p| match p.host_ip {
                Some(ip) if ip.is_ipv6() => {
                    format!(
                        "[{ip}]:{}->{}/{}",
                        p.host_port, p.container_port, p.protocol
                    )
                }
                Some(ip) => format!("{ip}:{}->{}/{}", p.host_port, p.container_port, p.protocol),
                None => format!("{}->{}/{}", p.host_port, p.container_port, p.protocol),
            })
            .collect();
        rows.push(vec![
            e.container_id.chars().take(12).collect(),
            e.ifname.clone(),
            e.network.clone(),
            opt(e.addr4),
            opt(e.addr6),
            if ports.is_empty() {
                "-".into()
            } else {
                ports.join(",")
            },
        ]);
    }
    table(rows)
}

/// `3d 4h`, `2h 5m`, `7m 3s`, `12s`.
pub fn duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

pub fn status(s: &Status, socket: &Path) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<17}{v}\n"));
    line("version:", s.version.clone());
    line("uptime:", duration(s.uptime_secs));
    line("socket:", socket.display().to_string());
    line(
        "table:",
        format!("inet {} (applied, {} elements)", s.table, s.table_elements),
    );
    if !s.cni_conf_dir.is_empty() {
        line("conflists:", s.cni_conf_dir.clone());
    }
    line("networks:", s.networks.to_string());
    line("endpoints:", s.endpoints.to_string());
    line("published ports:", s.published_ports.to_string());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_well() {
        assert_eq!(duration(12), "12s");
        assert_eq!(duration(7 * 60 + 3), "7m 3s");
        assert_eq!(duration(2 * 3600 + 5 * 60 + 9), "2h 5m");
        assert_eq!(duration(3 * 86400 + 4 * 3600), "3d 4h");
    }

    #[test]
    fn tables_align_and_trim() {
        let t = table(vec![
            vec!["A".into(), "BB".into(), "C".into()],
            vec!["long".into(), "x".into(), "".into()],
        ]);
        assert_eq!(t, "A      BB   C\nlong   x\n");
    }
}
