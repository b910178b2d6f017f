//! The real [`Kernel`](super::engine::Kernel), one trait per concern: netd's nftables table
//! through [`crate::ruleset`] ([`TableWriter`]), links through [`crate::link`] and the reaper
//! ([`HostLinks`]), routes from procfs and the forwarding sysctl ([`HostFacts`]), and
//! conntrack ([`Flows`]).

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::engine::{Flows, HostFacts, HostLink, HostLinks, KernelError, TableWriter};
use std::sync::Arc;
use std::time::Duration;

use tracing::debug;

use super::heal::HearingSlot;

use super::reaper::Reaper;
use super::sweeper::Sweeper;
use super::sysctl::{self, ForwardingError};
use crate::link::HostLinks as Rtnetlink;
use crate::nft::Batch;
use crate::plan::{Desired, Diff};
use crate::ruleset::{Applier, Groups};

/// Batches with at least this many set elements are committed while the healer does not
/// listen ([`crate::ruleset::Applier::commit_unheard`]). Measured on the development VM: a
/// notification costs about 1.6 µs per element (1.2 in the committing thread, building,
/// merging and broadcasting it; 0.4 in the healer, reading it), the unheard commit's extra
/// steps (two generation reads, an empty batch, leaving and joining the group) 6–8 µs, so
/// the break-even is near 5 elements. 32 keeps the usual ADD or DEL of a few elements on the
/// plain path, where the healer hears netd's own batches as before.
pub const UNHEARD_MIN_ELEMS: usize = 32;

pub struct HostKernel {
    applier: Applier,
    links: Rtnetlink,
    reaper: Arc<Reaper>,
    sweeper: Arc<Sweeper>,
    hearing: HearingSlot,
    /// Test knob (`NETD_TEST_UNHEARD_PAUSE_MS`): how long an unheard commit waits after
    /// the healer stopped listening and again before it listens again, so that a test can
    /// change the table inside that window.
    unheard_pause: Option<Duration>,
}

impl HostKernel {
    /// Opens netlink sockets in the calling thread's network namespace; call it from a plain
    /// thread (the daemon's main thread), not from an async task.
    pub fn new(table: &str) -> Result<Self, KernelError> {
        Ok(HostKernel {
            applier: Applier::new(table).map_err(|e| KernelError(e.to_string()))?,
            links: Rtnetlink::new().map_err(|e| KernelError(e.to_string()))?,
            reaper: Reaper::start().map_err(|e| KernelError(e.to_string()))?,
            sweeper: Sweeper::start()
                .map_err(|e| KernelError(format!("starting the conntrack sweeper thread: {e}")))?,
            hearing: HearingSlot::default(),
            unheard_pause: std::env::var("NETD_TEST_UNHEARD_PAUSE_MS")
                .ok()
                .and_then(|v| v.parse().ok())
                .map(Duration::from_millis),
        })
    }

    /// Where the healer lends its subscription ([`super::heal::Healer::lend_hearing`]);
    /// until it does, every batch is committed heard.
    pub fn hearing_slot(&self) -> HearingSlot {
        self.hearing.clone()
    }

    /// Commits a batch of `elems` set elements: a large one unheard when the healer lent its
    /// subscription, asking it for a check when someone else may have committed unheard.
    fn commit(&mut self, batch: &Batch, groups: &Groups, elems: usize) -> Result<(), KernelError> {
        let hearing = match self.hearing.get() {
            Some(h) if elems >= UNHEARD_MIN_ELEMS => h,
            _ => {
                return self
                    .applier
                    .commit(batch, groups)
                    .map_err(|e| KernelError(e.to_string()))
            }
        };
        let pause = self.unheard_pause;
        let out = self.applier.commit_unheard(
            batch,
            groups,
            &mut || {
                hearing.pause()?;
                if let Some(p) = pause {
                    std::thread::sleep(p);
                }
                Ok(())
            },
            &mut || {
                if let Some(p) = pause {
                    std::thread::sleep(p);
                }
                hearing.resume();
            },
        );
        debug!(
            elements = elems,
            others_committed = out.others_committed,
            "large batch committed unheard"
        );
        if out.others_committed {
            hearing.request_check();
        }
        out.result.map_err(|e| KernelError(e.to_string()))
    }
}

impl TableWriter for HostKernel {
    fn sync_full(&mut self, desired: &Desired) -> Result<(), KernelError> {
        let (batch, groups) = self
            .applier
            .sync_full_batch(desired)
            .map_err(|e| KernelError(e.to_string()))?;
        let elems = desired.sets.values().map(|s| s.len()).sum();
        self.commit(&batch, &groups, elems)
    }

    fn apply_diff(&mut self, diff: &Diff) -> Result<(), KernelError> {
        let (batch, groups) = self
            .applier
            .diff_batch(diff)
            .map_err(|e| KernelError(e.to_string()))?;
        let elems = diff
            .remove
            .values()
            .chain(diff.add.values())
            .map(Vec::len)
            .sum();
        self.commit(&batch, &groups, elems)
    }
}

impl HostFacts for HostKernel {
    fn routes(&mut self) -> Result<Vec<IpNet>, KernelError> {
        let mut out = Vec::new();
        if let Ok(text) = std::fs::read_to_string("/proc/net/route") {
            out.extend(parse_route4(&text).into_iter().map(IpNet::V4));
        }
        if let Ok(text) = std::fs::read_to_string("/proc/net/ipv6_route") {
            out.extend(parse_route6(&text).into_iter().map(IpNet::V6));
        }
        Ok(out)
    }

    fn ipv6_forwarding(&mut self) -> Result<(), ForwardingError> {
        sysctl::require_ipv6_forwarding()
    }
}

impl HostLinks for HostKernel {
    fn link_exists(&mut self, name: &str) -> Result<bool, KernelError> {
        self.links
            .link_exists(name)
            .map_err(|e| KernelError(e.to_string()))
    }

    fn links(&mut self) -> Result<Vec<HostLink>, KernelError> {
        Ok(self
            .links
            .list_links()
            .map_err(|e| KernelError(e.to_string()))?
            .into_iter()
            .map(|l| HostLink {
                owner: l
                    .alias
                    .as_deref()
                    .and_then(crate::link::alias_network)
                    .map(str::to_string),
                name: l.name,
                kind: l.kind,
            })
            .collect())
    }

    fn delete_owned_link(
        &mut self,
        name: &str,
        kind: &str,
        network: Option<&str>,
    ) -> Result<crate::link::Removal, KernelError> {
        self.links
            .delete_owned(name, kind, network)
            .map_err(|e| KernelError(e.to_string()))
    }

    fn remove_link_later(&mut self, name: &str, network: &str, netns: Option<&str>) {
        self.reaper.schedule(name, network, netns);
    }

    fn settle_link(&mut self, name: &str) {
        self.reaper.settle(name);
    }

    fn settle_links_of(&mut self, network: &str, keep: usize) {
        self.reaper.settle_network(network, keep);
    }

    fn is_netns(&mut self, path: &str) -> bool {
        crate::link::is_netns(path)
    }
}

impl Flows for HostKernel {
    fn clear_udp_conntrack(
        &mut self,
        bindings: &[crate::ports::Binding],
    ) -> Result<usize, KernelError> {
        crate::conntrack::clear_udp(bindings).map_err(|e| KernelError(e.to_string()))
    }

    fn clear_conntrack_later(&mut self, addrs: &[std::net::IpAddr]) {
        self.sweeper.schedule(addrs);
    }

    fn settle_conntrack(&mut self, addrs: &[std::net::IpAddr]) {
        self.sweeper.settle(addrs);
    }
}

/// Destinations of /proc/net/route (main table, IPv4): hex little-endian address and mask.
pub fn parse_route4(text: &str) -> Vec<Ipv4Net> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let dst = u32::from_str_radix(f.get(1)?, 16).ok()?;
            let mask = u32::from_str_radix(f.get(7)?, 16).ok()?;
            let dst = Ipv4Addr::from(u32::from_be(dst));
            let prefix = u32::from_be(mask).leading_ones() as u8;
            Ipv4Net::new(dst, prefix).ok()
        })
        .collect()
}

/// Destinations of /proc/net/ipv6_route: 32 hex digits and a hex prefix length. Link-local
/// and multicast routes say nothing about which ULA subnets are free, so they are skipped.
pub fn parse_route6(text: &str) -> Vec<Ipv6Net> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let dst = u128::from_str_radix(f.first()?, 16).ok()?;
            let prefix = u8::from_str_radix(f.get(1)?, 16).ok()?;
            let addr = Ipv6Addr::from(dst);
            if addr.segments()[0] & 0xffc0 == 0xfe80 || addr.segments()[0] & 0xff00 == 0xff00 {
                return None;
            }
            Ipv6Net::new(addr, prefix).ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_procfs_routes() {
        let v4 =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                  eth0\t00000000\t0102000A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                  eth0\t0000000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        assert_eq!(
            parse_route4(v4),
            vec![
                "0.0.0.0/0".parse::<Ipv4Net>().unwrap(),
                "10.0.0.0/24".parse().unwrap()
            ]
        );
        let v6 = "fd001234000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0\n\
                  fe800000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0\n";
        assert_eq!(
            parse_route6(v6),
            vec!["fd00:1234::/64".parse::<Ipv6Net>().unwrap()]
        );
    }
}
