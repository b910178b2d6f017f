//! The engine owns netd's state and keeps the kernel in step with it. Every change takes one
//! path: validate against the state, compute the new desired table ([`crate::plan`]), apply the
//! element diff as one nftables batch, persist the changed object, then commit in memory. If the
//! kernel refuses, nothing was persisted; if persisting fails, the table change is reverted.
//! Either way the state, the table and the disk agree when the call returns.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use tracing::{debug, info, warn};

use crate::api::{ApiError, AttachRequest, Attachment, CreateNetwork, GcRequest, Status};
use crate::conflist;
use crate::ipam;
use crate::link::Removal;
use crate::model::{self, Endpoint, EndpointKey, GatewayMode, Network};
use crate::plan::{self, Desired, Diff};
use crate::ports;
use crate::store::{self, Meta, Store};

#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct KernelError(pub String);

/// What the engine needs from the kernel. The real one is [`super::host::HostKernel`]; unit
/// tests use an in-memory one.
pub trait Kernel: Send {
    /// Replaces netd's table (chains, rules, every element) with `desired` in one batch.
    fn sync_full(&mut self, desired: &Desired) -> Result<(), KernelError>;
    /// Applies element changes in one batch.
    fn apply_diff(&mut self, diff: &Diff) -> Result<(), KernelError>;
    /// Destinations of the host's routes (to keep automatic subnets clear of them).
    fn routes(&mut self) -> Result<Vec<IpNet>, KernelError>;
    fn link_exists(&mut self, name: &str) -> Result<bool, KernelError>;
    /// The host's links: names, kinds and whose they are by netd's mark.
    fn links(&mut self) -> Result<Vec<HostLink>, KernelError>;
    /// Removes a link (a DEL's host veth) by name. A missing link is not an error.
    fn delete_link(&mut self, name: &str) -> Result<(), KernelError>;
    /// Removes link `name` only if it is of `kind` and carries netd's mark (of `network`
    /// when given): see [`crate::link::HostLinks::delete_owned`].
    fn delete_owned_link(
        &mut self,
        name: &str,
        kind: &str,
        network: Option<&str>,
    ) -> Result<Removal, KernelError>;
    /// Whether `path` is (still) a network namespace.
    fn is_netns(&mut self, path: &str) -> bool;
    /// Deletes the UDP conntrack entries whose original destination is one of `bindings`
    /// (see [`crate::conntrack`]) and returns how many; the default has none to delete.
    fn clear_udp_conntrack(&mut self, _bindings: &[ports::Binding]) -> Result<usize, KernelError> {
        Ok(0)
    }
    /// Deletes the conntrack entries that involve one of `addrs` (a released endpoint's; see
    /// [`crate::conntrack::clear_addrs`]) and returns how many; the default has none.
    fn clear_conntrack_of(&mut self, _addrs: &[IpAddr]) -> Result<usize, KernelError> {
        Ok(0)
    }
    /// Removes a host link after the current request is answered (see
    /// [`super::reaper`]); the default removes it at once.
    fn remove_link_later(&mut self, name: &str) {
        if let Err(e) = self.delete_link(name) {
            warn!(link = %name, error = %e, "could not remove link");
        }
    }
    /// Returns once no removal of `name` is pending, so its name can be used again.
    fn settle_link(&mut self, _name: &str) {}
}

/// A port mapping refused: a host binding another endpoint holds is a conflict (HTTP 409,
/// CNI code 100); everything else is a mapping that can never work as asked (port 0, an
/// address family the network lacks, any mapping on an internal network, one binding asked
/// for twice) and so invalid (HTTP 400, CNI code 7), as docs/reliability.md lists.
fn port_error(e: ports::PortError) -> ApiError {
    match e {
        ports::PortError::Taken { .. } => ApiError::conflict(e.to_string()),
        _ => ApiError::invalid(e.to_string()),
    }
}

/// A link of the host as reconciliation sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostLink {
    pub name: String,
    /// "bridge", "veth", ... (None for links without a kind, like physical NICs).
    pub kind: Option<String>,
    /// The network named by netd's mark on the link ([`crate::link::owner_alias`]); None
    /// when netd did not make it.
    pub owner: Option<String>,
}

/// Published ports: ::1 cannot be DNATed to a container (IPv6 has no route_localnet: the
/// answer, de-NATed back to ::1, is dropped when it arrives on the bridge), so such a binding
/// is refused rather than accepted and silently dead. See docs/ports.md.
fn refuse_ipv6_loopback(mappings: &[model::PortMapping]) -> Result<(), ApiError> {
    match mappings
        .iter()
        .find(|pm| pm.host_ip.is_some_and(|ip| ip == std::net::Ipv6Addr::LOCALHOST))
    {
        Some(pm) => Err(ApiError::invalid(format!(
            "port mapping [::1]:{}->{}/{}: netd cannot publish ports on the IPv6 loopback address ::1 (Linux has no route_localnet for IPv6: answers addressed back to ::1 are dropped when they arrive from a container); publish on 127.0.0.1 or on a host address instead",
            pm.host_port, pm.container_port, pm.protocol
        ))),
        None => Ok(()),
    }
}

/// An endpoint whose host veth is missing is released only once it is this old, so an ADD
/// that is still building its links is not mistaken for a dead one.
pub const ATTACH_GRACE_SECS: u64 = 60;

/// A Linux bridge numbers its ports in 10 bits and port 0 is reserved (the kernel's
/// BR_MAX_PORTS), so one network holds at most this many endpoints whatever its subnet.
pub const MAX_BRIDGE_PORTS: usize = 1023;

/// After a restart, an endpoint made before netd started whose host veth is still missing
/// this long after the start is released: an ADD that was building its links when the old
/// netd stopped has finished (or failed) by then, and a DEL that ran while netd was down
/// removed the veth without being able to release the endpoint.
pub const RESTART_GRACE_SECS: u64 = 10;

/// What [`Engine::reconcile_links`] found and did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reconciled {
    pub released: Vec<EndpointKey>,
    pub veths_removed: Vec<String>,
    pub bridges_removed: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub table: String,
    /// The socket path written into conflists, so the plugin finds this daemon.
    pub socket: PathBuf,
    pub cni_conf_dir: PathBuf,
    pub pool4: Ipv4Net,
    pub pool4_prefix: u8,
    /// A ULA /48 for automatic IPv6 subnets; None: a random one, persisted on first use.
    pub ula_base: Option<Ipv6Net>,
    /// The `cniVersion` of conflists of networks created without one.
    pub cni_version: String,
}

pub struct Engine {
    cfg: EngineConfig,
    store: Store,
    kernel: Box<dyn Kernel>,
    meta: Meta,
    networks: BTreeMap<String, Network>,
    endpoints: BTreeMap<EndpointKey, Endpoint>,
    /// What netd's table holds now.
    applied: Desired,
    /// The address handed out last per network, so released ones are not reused at once
    /// (persisted in `meta.cursors` when an address is released, see [`Self::save_cursor`]).
    last4: BTreeMap<String, Ipv4Addr>,
    last6: BTreeMap<String, Ipv6Addr>,
    started: SystemTime,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn internal(context: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError::internal(format!("{context}: {e}"))
}

impl Engine {
    /// Loads the state and applies the whole table in one batch. Endpoints whose network is
    /// gone (a crash between the two removals) are dropped.
    pub fn start(
        cfg: EngineConfig,
        store: Store,
        mut kernel: Box<dyn Kernel>,
    ) -> Result<Engine, ApiError> {
        let loaded = store.load().map_err(|e| internal("loading state", e))?;
        let networks: BTreeMap<_, _> = loaded
            .networks
            .into_iter()
            .map(|n| (n.name.clone(), n))
            .collect();
        let mut endpoints = BTreeMap::new();
        for ep in loaded.endpoints {
            if networks.contains_key(&ep.network) {
                endpoints.insert(ep.key(), ep);
            } else {
                warn!(endpoint = %ep.key(), "dropping endpoint of a network that no longer exists");
                store
                    .delete_endpoint(&ep.key())
                    .map_err(|e| internal("removing orphan endpoint", e))?;
            }
        }
        let desired = plan::desired(networks.values(), endpoints.values());
        kernel
            .sync_full(&desired)
            .map_err(|e| internal(&format!("applying table {}", cfg.table), e))?;
        info!(
            table = %cfg.table,
            networks = networks.len(),
            endpoints = endpoints.len(),
            elements = desired.len(),
            "table applied from state"
        );
        let cursors = &loaded.meta.cursors;
        let last4 = cursors
            .iter()
            .filter_map(|(n, c)| Some((n.clone(), c.last4?)))
            .collect();
        let last6 = cursors
            .iter()
            .filter_map(|(n, c)| Some((n.clone(), c.last6?)))
            .collect();
        let mut engine = Engine {
            cfg,
            store,
            kernel,
            meta: loaded.meta,
            networks,
            endpoints,
            applied: desired,
            last4,
            last6,
            started: SystemTime::now(),
        };
        engine.sync_conflists()?;
        Ok(engine)
    }

    pub fn networks(&self) -> impl Iterator<Item = &Network> {
        self.networks.values()
    }

    pub fn endpoints(&self) -> impl Iterator<Item = &Endpoint> {
        self.endpoints.values()
    }

    pub fn has_ipv6(&self) -> bool {
        self.networks.values().any(|n| n.subnet6.is_some())
    }

    pub fn status(&self) -> Status {
        Status {
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_secs: self.started.elapsed().map(|d| d.as_secs()).unwrap_or(0),
            table: self.cfg.table.clone(),
            networks: self.networks.len(),
            endpoints: self.endpoints.len(),
            published_ports: self.endpoints.values().map(|e| e.ports.len()).sum(),
            table_elements: self.applied.len(),
            cni_conf_dir: self.cfg.cni_conf_dir.display().to_string(),
        }
    }

    pub fn network(&self, name: &str) -> Result<Network, ApiError> {
        self.networks
            .get(name)
            .cloned()
            .ok_or_else(|| ApiError::not_found(format!("network {name:?} does not exist")))
    }

    /// Name of netd's table.
    pub fn table(&self) -> &str {
        &self.cfg.table
    }

    /// What netd's table holds now, as far as the engine knows.
    pub fn applied(&self) -> &Desired {
        &self.applied
    }

    /// Makes the table match the state again (after someone else changed it).
    pub fn resync(&mut self) -> Result<(), ApiError> {
        let desired = plan::desired(self.networks.values(), self.endpoints.values());
        self.kernel
            .sync_full(&desired)
            .map_err(|e| internal("re-applying the table", e))?;
        self.applied = desired;
        Ok(())
    }

    /// Applies the table for the state as it is in memory now; on failure the caller undoes
    /// its in-memory change.
    fn apply_current(&mut self) -> Result<Desired, ApiError> {
        let desired = plan::desired(self.networks.values(), self.endpoints.values());
        let diff = self.applied.diff(&desired);
        if !diff.is_empty() {
            self.apply_or_resync(&diff, |_| desired.clone())?;
        }
        Ok(desired)
    }

    /// Applies `diff`, which takes the table from `self.applied` to `target(&self.applied)`. Element
    /// batches are strict (removing a missing element or adding a present one fails the whole
    /// batch), so a refusal usually means the kernel's table drifted from `self.applied`:
    /// someone deleted or added an element and the healer has not restored it yet (its
    /// notifications were lost, or it has not run). Then the whole table is applied for the
    /// target in one batch, so this request succeeds now instead of every ADD and DEL failing
    /// until the healer's next check. Only if that fails too is the request refused.
    fn apply_or_resync(
        &mut self,
        diff: &Diff,
        target: impl FnOnce(&Desired) -> Desired,
    ) -> Result<(), ApiError> {
        let refused = match self.kernel.apply_diff(diff) {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        let target = target(&self.applied);
        match self.kernel.sync_full(&target) {
            Ok(()) => {
                warn!(
                    table = %self.cfg.table,
                    refused = %refused,
                    elements = target.len(),
                    "the kernel refused an element change: netd's table differed from its state; re-applied the whole table in one batch"
                );
                Ok(())
            }
            Err(e) => Err(internal(
                "updating the nftables table",
                format!("{refused}; re-applying the whole table failed too: {e}"),
            )),
        }
    }

    /// Adds (or removes) one endpoint's elements in one batch: O(its elements), however large
    /// the table (see [`plan::endpoint_elems`]). Returns the diff for [`Self::commit_diff`] or
    /// [`Self::undo_diff`].
    fn apply_endpoint(
        &mut self,
        net: &Network,
        ep: &Endpoint,
        add: bool,
    ) -> Result<Diff, ApiError> {
        let mut diff = Diff::default();
        for (set, elem) in plan::endpoint_elems(net, ep) {
            let present = self
                .applied
                .sets
                .get(&set)
                .is_some_and(|s| s.contains(&elem));
            match (add, present) {
                (true, false) => diff.add.entry(set).or_default().push(elem),
                (false, true) => diff.remove.entry(set).or_default().push(elem),
                _ => {}
            }
        }
        if !diff.is_empty() {
            self.apply_or_resync(&diff, |applied| {
                let mut target = applied.clone();
                target.apply(&diff);
                target
            })?;
        }
        Ok(diff)
    }

    /// Records an applied diff in `self.applied`.
    fn commit_diff(&mut self, diff: &Diff) {
        self.applied.apply(diff);
    }

    /// Takes back an applied diff after a later step failed.
    fn undo_diff(&mut self, diff: &Diff) {
        let back = Diff {
            remove: diff.add.clone(),
            add: diff.remove.clone(),
        };
        if let Err(e) = self.kernel.apply_diff(&back) {
            warn!(error = %e, "could not revert the table; re-applying it whole");
            if let Err(e) = self.kernel.sync_full(&self.applied) {
                warn!(error = %e, "re-applying the table failed too");
            }
        }
    }

    /// Reverts the table to `self.applied` after a later step failed.
    fn revert_table(&mut self, attempted: &Desired) {
        let back = attempted.diff(&self.applied);
        if let Err(e) = self.kernel.apply_diff(&back) {
            warn!(error = %e, "could not revert the table; re-applying it whole");
            if let Err(e) = self.kernel.sync_full(&self.applied) {
                warn!(error = %e, "re-applying the table failed too");
            }
        }
    }

    /// Brings links and state together after a restart (or on a timer): releases endpoints
    /// whose container netns is gone, or whose host veth is gone after the grace period;
    /// removes host veths no endpoint claims and bridges no network claims, but only those
    /// netd marked as its own ([`crate::link::owner_alias`]) and of the expected kind. A
    /// link someone else made is never touched, whatever its name.
    pub fn reconcile_links(&mut self) -> Result<Reconciled, ApiError> {
        let mut report = Reconciled::default();
        let links = self
            .kernel
            .links()
            .map_err(|e| internal("listing links", e))?;
        let names: BTreeSet<&str> = links.iter().map(|l| l.name.as_str()).collect();
        let now = now();
        let started = self
            .started
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let settled = |e: &Endpoint| {
            now.saturating_sub(e.created) >= ATTACH_GRACE_SECS
                || (e.created < started && now.saturating_sub(started) >= RESTART_GRACE_SECS)
        };
        let dead: Vec<EndpointKey> = self
            .endpoints
            .values()
            .filter(|e| {
                !self.kernel.is_netns(&e.netns)
                    || (!names.contains(e.host_veth.as_str()) && settled(e))
            })
            .map(Endpoint::key)
            .collect();
        for key in dead {
            if self.detach(&key)? {
                warn!(endpoint = %key, "released: its container netns or host veth is gone");
                report.released.push(key);
            }
        }
        let claimed_veths: BTreeSet<&str> = self
            .endpoints
            .values()
            .map(|e| e.host_veth.as_str())
            .collect();
        let claimed_bridges: BTreeSet<&str> =
            self.networks.values().map(|n| n.bridge.as_str()).collect();
        for link in &links {
            let Some(owner) = link.owner.as_deref() else {
                continue;
            };
            let kind = match link.kind.as_deref() {
                Some("veth") if !claimed_veths.contains(link.name.as_str()) => "veth",
                Some("bridge") if !claimed_bridges.contains(link.name.as_str()) => "bridge",
                _ => continue,
            };
            match self.kernel.delete_owned_link(&link.name, kind, Some(owner)) {
                Ok(Removal::Deleted) => {
                    info!(link = %link.name, kind, network = owner, "removed a link netd made that nothing claims");
                    if kind == "veth" {
                        report.veths_removed.push(link.name.clone());
                    } else {
                        report.bridges_removed.push(link.name.clone());
                    }
                }
                Ok(Removal::Missing) => {}
                Ok(Removal::Foreign(why)) => {
                    debug!(link = %link.name, why, "left alone: changed since it was listed")
                }
                Err(e) => warn!(link = %link.name, error = %e, "could not remove orphan link"),
            }
        }
        Ok(report)
    }

    // ---- networks ----

    pub fn create_network(&mut self, req: CreateNetwork) -> Result<Network, ApiError> {
        let net = self.plan_network(req)?;
        self.networks.insert(net.name.clone(), net.clone());
        let desired = match self.apply_current() {
            Ok(d) => d,
            Err(e) => {
                self.networks.remove(&net.name);
                return Err(e);
            }
        };
        let persisted = self
            .store
            .put_network(&net)
            .map_err(|e| internal("saving the network", e))
            .and_then(|()| self.write_conflist(&net));
        if let Err(e) = persisted {
            self.revert_table(&desired);
            self.networks.remove(&net.name);
            let _ = self.store.delete_network(&net.name);
            return Err(e);
        }
        self.applied = desired;
        info!(network = %net.name, bridge = %net.bridge, subnet4 = ?net.subnet4, subnet6 = ?net.subnet6, "network created");
        Ok(net)
    }

    /// Validates a create request and fills in what it leaves open.
    fn plan_network(&mut self, req: CreateNetwork) -> Result<Network, ApiError> {
        let inv = |e: &dyn std::fmt::Display| ApiError::invalid(e.to_string());
        model::validate_network_name(&req.name).map_err(|e| inv(&e))?;
        if self.networks.contains_key(&req.name) {
            return Err(ApiError::conflict(format!(
                "network {:?} already exists",
                req.name
            )));
        }
        let bridge = match &req.bridge {
            Some(b) => {
                model::validate_ifname(b).map_err(|e| inv(&e))?;
                b.clone()
            }
            None => default_bridge_name(&req.name),
        };
        if let Some(other) = self.networks.values().find(|n| n.bridge == bridge) {
            return Err(ApiError::conflict(format!(
                "bridge {bridge} is already used by network {}",
                other.name
            )));
        }
        if self
            .kernel
            .link_exists(&bridge)
            .map_err(|e| internal("looking up links", e))?
        {
            return Err(ApiError::conflict(format!(
                "an interface named {bridge} already exists on the host and netd does not own it; choose another with --bridge"
            )));
        }

        let mode4 = req.gateway_mode_ipv4.unwrap_or_default();
        let mode6 = req.gateway_mode_ipv6.unwrap_or_default();
        if req.internal && (mode4 == GatewayMode::Routed || mode6 == GatewayMode::Routed) {
            return Err(ApiError::invalid(
                "an internal network has no gateway to the outside, so it cannot use the routed gateway mode",
            ));
        }
        let wants6 = req.ipv6 || req.subnet6.is_some() || req.gateway6.is_some();
        if req.no_ipv4 && !wants6 {
            return Err(ApiError::invalid(
                "a network without IPv4 needs IPv6 (--ipv6)",
            ));
        }
        if req.no_ipv4 && (req.subnet.is_some() || req.gateway.is_some()) {
            return Err(ApiError::invalid(
                "--subnet/--gateway contradict a network without IPv4",
            ));
        }
        if !wants6 && req.gateway_mode_ipv6.is_some() {
            return Err(ApiError::invalid(
                "an IPv6 gateway mode needs an IPv6 network (--ipv6)",
            ));
        }
        let cni_version = req
            .cni_version
            .unwrap_or_else(|| self.cfg.cni_version.clone());
        conflist::check_version(&cni_version).map_err(|e| inv(&e))?;
        let mtu = req.mtu.unwrap_or(1500);
        if !(68..=65535).contains(&mtu) {
            return Err(ApiError::invalid(format!(
                "MTU {mtu} is out of range (68-65535)"
            )));
        }
        if wants6 && mtu < 1280 {
            return Err(ApiError::invalid(format!(
                "MTU {mtu} is below IPv6's minimum of 1280"
            )));
        }

        let taken: Vec<(String, IpNet)> = self
            .networks
            .values()
            .flat_map(|n| {
                let name = format!("network {}", n.name);
                n.subnet4
                    .map(IpNet::V4)
                    .into_iter()
                    .chain(n.subnet6.map(IpNet::V6))
                    .map(move |s| (name.clone(), s))
            })
            .collect();

        let (subnet4, gateway4) = if req.no_ipv4 {
            (None, None)
        } else {
            let subnet = match req.subnet {
                Some(s) => {
                    if s != s.trunc() {
                        return Err(ApiError::invalid(format!(
                            "subnet {s} has host bits set; did you mean {}?",
                            s.trunc()
                        )));
                    }
                    ipam::check_free(IpNet::V4(s), &taken)
                        .map_err(|e| ApiError::conflict(e.to_string()))?;
                    s
                }
                None => {
                    let mut avoid: Vec<IpNet> = taken.iter().map(|(_, s)| *s).collect();
                    avoid.extend(
                        self.kernel
                            .routes()
                            .map_err(|e| internal("reading host routes", e))?,
                    );
                    ipam::choose_subnet4(self.cfg.pool4, self.cfg.pool4_prefix, &avoid)
                        .map_err(|e| ApiError::conflict(e.to_string()))?
                }
            };
            let gateway = match req.gateway {
                Some(g) => {
                    ipam::check_gateway4(subnet, g).map_err(|e| inv(&e))?;
                    g
                }
                None => ipam::default_gateway4(subnet).map_err(|e| inv(&e))?,
            };
            (Some(subnet), Some(gateway))
        };

        let (subnet6, gateway6) = if wants6 {
            super::sysctl::require_ipv6_forwarding().map_err(|e| inv(&e))?;
            let subnet = match req.subnet6 {
                Some(s) => {
                    if s != s.trunc() {
                        return Err(ApiError::invalid(format!(
                            "subnet {s} has host bits set; did you mean {}?",
                            s.trunc()
                        )));
                    }
                    if s.prefix_len() > 126 {
                        return Err(ApiError::invalid(format!("subnet {s} is too small")));
                    }
                    ipam::check_free(IpNet::V6(s), &taken)
                        .map_err(|e| ApiError::conflict(e.to_string()))?;
                    s
                }
                None => {
                    let ula = match self.cfg.ula_base {
                        Some(base) => base,
                        None => ipam::ula_prefix(self.ula_global_id()?),
                    };
                    let mut avoid: Vec<IpNet> = taken.iter().map(|(_, s)| *s).collect();
                    avoid.extend(
                        self.kernel
                            .routes()
                            .map_err(|e| internal("reading host routes", e))?,
                    );
                    ipam::choose_subnet6(ula, &avoid)
                        .map_err(|e| ApiError::conflict(e.to_string()))?
                }
            };
            let gateway = match req.gateway6 {
                Some(g) => {
                    ipam::check_gateway6(subnet, g).map_err(|e| inv(&e))?;
                    g
                }
                None => ipam::default_gateway6(subnet),
            };
            (Some(subnet), Some(gateway))
        } else {
            (None, None)
        };

        Ok(Network {
            name: req.name,
            bridge,
            subnet4,
            gateway4,
            subnet6,
            gateway6,
            internal: req.internal,
            icc: req.icc.unwrap_or(true),
            gateway_mode4: mode4,
            gateway_mode6: mode6,
            mtu,
            cni_version,
            created: now(),
        })
    }

    /// The ULA global ID, generated from the kernel's random source on first use and
    /// persisted so automatic IPv6 subnets stay the same across restarts.
    fn ula_global_id(&mut self) -> Result<u64, ApiError> {
        if let Some(id) = self.meta.ula_global_id {
            return Ok(id);
        }
        let mut buf = [0u8; 8];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut buf))
            .map_err(|e| internal("reading /dev/urandom", e))?;
        let id = u64::from_le_bytes(buf) & 0xff_ffff_ffff;
        let meta = Meta {
            ula_global_id: Some(id),
            ..self.meta.clone()
        };
        self.store
            .put_meta(&meta)
            .map_err(|e| internal("saving the ULA prefix", e))?;
        self.meta = meta;
        Ok(id)
    }

    pub fn remove_network(&mut self, name: &str) -> Result<(), ApiError> {
        let net = self.network(name)?;
        let attached: Vec<&Endpoint> = self
            .endpoints
            .values()
            .filter(|e| e.network == name)
            .collect();
        if !attached.is_empty() {
            return Err(ApiError::conflict(format!(
                "network {name} still has {} endpoint(s) attached (first: container {} {}); remove those containers (or detach them with CNI DEL) first",
                attached.len(),
                attached[0].container_id,
                attached[0].ifname
            )));
        }
        self.networks.remove(name);
        let desired = match self.apply_current() {
            Ok(d) => d,
            Err(e) => {
                self.networks.insert(name.to_string(), net);
                return Err(e);
            }
        };
        if let Err(e) = self.store.delete_network(name) {
            self.revert_table(&desired);
            self.networks.insert(name.to_string(), net);
            return Err(internal("removing the network from state", e));
        }
        self.applied = desired;
        self.last4.remove(name);
        self.last6.remove(name);
        if self.meta.cursors.contains_key(name) {
            let mut meta = self.meta.clone();
            meta.cursors.remove(name);
            match self.store.put_meta(&meta) {
                Ok(()) => self.meta = meta,
                Err(e) => {
                    warn!(network = %name, error = %e, "could not forget the allocation cursor")
                }
            }
        }
        let path = self.cfg.cni_conf_dir.join(conflist::file_name(name));
        if let Err(e) = std::fs::remove_file(&path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                warn!(path = %path.display(), error = %e, "could not remove conflist");
            }
        }
        match self
            .kernel
            .delete_owned_link(&net.bridge, "bridge", Some(name))
        {
            Ok(Removal::Deleted | Removal::Missing) => {}
            Ok(Removal::Foreign(why)) => {
                warn!(bridge = %net.bridge, why, "left the link named like the network's bridge alone: netd did not make it")
            }
            Err(e) => warn!(bridge = %net.bridge, error = %e, "could not remove the bridge"),
        }
        info!(network = %name, "network removed");
        Ok(())
    }

    fn write_conflist(&self, net: &Network) -> Result<(), ApiError> {
        let dir = &self.cfg.cni_conf_dir;
        std::fs::create_dir_all(dir)
            .map_err(|e| internal(&format!("creating {}", dir.display()), e))?;
        let text = conflist::render(net, &self.cfg.socket.to_string_lossy());
        store::write_atomic(&dir.join(conflist::file_name(&net.name)), text.as_bytes())
            .map_err(|e| internal("writing the conflist", e))
    }

    /// Rewrites conflists that are missing or stale (another socket path), and removes netd's
    /// conflists for networks that no longer exist. Other files are never touched.
    fn sync_conflists(&mut self) -> Result<(), ApiError> {
        for net in self.networks.values() {
            let path = self.cfg.cni_conf_dir.join(conflist::file_name(&net.name));
            let want = conflist::render(net, &self.cfg.socket.to_string_lossy());
            if std::fs::read_to_string(&path).ok().as_deref() != Some(want.as_str()) {
                self.write_conflist(net)?;
            }
        }
        if let Ok(entries) = std::fs::read_dir(&self.cfg.cni_conf_dir) {
            for entry in entries.flatten() {
                let file = entry.file_name();
                let file = file.to_string_lossy();
                if let Some(name) = conflist::network_of(&file) {
                    if !self.networks.contains_key(name) {
                        info!(file = %file, "removing conflist of a network that no longer exists");
                        let _ = std::fs::remove_file(entry.path());
                    }
                }
            }
        }
        Ok(())
    }

    // ---- endpoints ----

    /// Attaches an endpoint; with `ensure_network`, creates the network first if it does not
    /// exist. The engine runs one request at a time, so parallel first ADDs make one network
    /// and all attach to it. If the attach fails, a network created for it is removed again.
    pub fn attach(&mut self, mut req: AttachRequest) -> Result<Attachment, ApiError> {
        let Some(spec) = req.ensure_network.take() else {
            return self.attach_existing(req);
        };
        if spec.name != req.network {
            return Err(ApiError::invalid(format!(
                "the network to ensure is {:?}, but the attach is to {:?}",
                spec.name, req.network
            )));
        }
        if let Some(net) = self.networks.get(&req.network) {
            same_subnets(&spec, net)?;
            return self.attach_existing(req);
        }
        let net = self.create_network(spec)?;
        info!(network = %net.name, "network created on first attach");
        self.attach_existing(req).inspect_err(|_| {
            if let Err(e) = self.remove_network(&net.name) {
                warn!(network = %net.name, error = %e.message, "could not remove the network made for a failed attach");
            }
        })
    }

    fn attach_existing(&mut self, req: AttachRequest) -> Result<Attachment, ApiError> {
        let inv = |e: &dyn std::fmt::Display| ApiError::invalid(e.to_string());
        model::validate_container_id(&req.container_id).map_err(|e| inv(&e))?;
        model::validate_ifname(&req.ifname).map_err(|e| inv(&e))?;
        if !req.netns.starts_with('/') {
            return Err(ApiError::invalid(format!(
                "netns {:?} is not an absolute path",
                req.netns
            )));
        }
        let net = self.networks.get(&req.network).cloned().ok_or_else(|| {
            ApiError::not_found(format!(
                "network {:?} is not known to netd (netctl network ls lists the networks)",
                req.network
            ))
        })?;
        if !self.kernel.is_netns(&req.netns) {
            return Err(ApiError::invalid(format!(
                "netns {:?} is not a network namespace",
                req.netns
            )));
        }
        let key = EndpointKey {
            network: req.network.clone(),
            container_id: req.container_id.clone(),
            ifname: req.ifname.clone(),
        };
        if self.endpoints.contains_key(&key) {
            return Err(ApiError::conflict(format!(
                "container {} already has interface {} on network {}",
                key.container_id, key.ifname, key.network
            )));
        }
        // A DEL of the same container interface may still be removing its veth.
        self.kernel
            .settle_link(&model::host_veth_name(&key.container_id, &key.ifname));
        let attached = self
            .endpoints
            .values()
            .filter(|e| e.network == net.name)
            .count();
        if attached >= MAX_BRIDGE_PORTS {
            return Err(ApiError::conflict(format!(
                "network {} has {attached} endpoints, the most a Linux bridge can hold ({MAX_BRIDGE_PORTS} ports); attach further containers to another network",
                net.name
            )));
        }
        let existing = self
            .endpoints
            .values()
            .filter_map(|e| self.networks.get(&e.network).map(|n| (e, n)));
        // What the gateway modes make of the mappings is a property of the request (code 7),
        // not a conflict with another endpoint.
        ports::validate(&net, &req.port_mappings).map_err(|e| ApiError::invalid(e.to_string()))?;
        ports::check(&net, &req.port_mappings, existing).map_err(port_error)?;
        refuse_ipv6_loopback(&req.port_mappings)?;

        let (fixed4, fixed6) = self.fixed_addrs(&net, &req.ips)?;
        let addr4 = match (net.subnet4, net.gateway4) {
            _ if fixed4.is_some() => fixed4,
            (Some(s), Some(g)) => {
                let used: BTreeSet<Ipv4Addr> = self
                    .endpoints
                    .values()
                    .filter(|e| e.network == net.name)
                    .filter_map(|e| e.addr4)
                    .collect();
                Some(
                    ipam::allocate4(s, g, &used, self.last4.get(&net.name).copied())
                        .map_err(|e| ApiError::conflict(e.to_string()))?,
                )
            }
            _ => None,
        };
        let addr6 = match (net.subnet6, net.gateway6) {
            _ if fixed6.is_some() => fixed6,
            (Some(s), Some(g)) => {
                let used: BTreeSet<Ipv6Addr> = self
                    .endpoints
                    .values()
                    .filter(|e| e.network == net.name)
                    .filter_map(|e| e.addr6)
                    .collect();
                Some(
                    ipam::allocate6(s, g, &used, self.last6.get(&net.name).copied())
                        .map_err(|e| ApiError::conflict(e.to_string()))?,
                )
            }
            _ => None,
        };
        let mut port_mappings = req.port_mappings;
        port_mappings.sort();
        let ep = Endpoint {
            network: req.network,
            host_veth: model::host_veth_name(&req.container_id, &req.ifname),
            container_id: req.container_id,
            ifname: req.ifname,
            netns: req.netns,
            addr4,
            addr6,
            ports: port_mappings,
            mac: req.mac,
            created: now(),
        };
        let diff = self.apply_endpoint(&net, &ep, true)?;
        if let Err(e) = self.store.put_endpoint(&ep) {
            self.undo_diff(&diff);
            return Err(internal("saving the endpoint", e));
        }
        self.commit_diff(&diff);
        self.endpoints.insert(key.clone(), ep.clone());
        self.clear_stale_udp_flows(&net, &ep);
        // Only allocated addresses move the allocator on; a fixed one says nothing about where
        // the next free address is.
        if let (Some(a), None) = (addr4, fixed4) {
            self.last4.insert(net.name.clone(), a);
        }
        if let (Some(a), None) = (addr6, fixed6) {
            self.last6.insert(net.name.clone(), a);
        }
        info!(endpoint = %key, addr4 = ?addr4, addr6 = ?addr6, ports = ep.ports.len(), "endpoint attached");
        Ok(Attachment {
            network: net,
            endpoint: ep,
        })
    }

    /// The fixed addresses an attach asks for, checked against the network: one per family,
    /// in its subnet, a host address, not the gateway, and held by no other endpoint. An
    /// address another endpoint holds is a conflict; anything else wrong is invalid.
    fn fixed_addrs(
        &self,
        net: &Network,
        ips: &[model::RequestedAddr],
    ) -> Result<(Option<Ipv4Addr>, Option<Ipv6Addr>), ApiError> {
        let (fixed4, fixed6) = requested_addrs(net, ips)?;
        let holders: BTreeMap<IpAddr, String> = self
            .endpoints
            .values()
            .filter(|e| e.network == net.name)
            .flat_map(|e| {
                let who = format!("container {} {}", e.container_id, e.ifname);
                let v4 = e.addr4.map(|a| (IpAddr::V4(a), who.clone()));
                let v6 = e.addr6.map(|a| (IpAddr::V6(a), who));
                v4.into_iter().chain(v6)
            })
            .collect();
        let check = |subnet: Option<IpNet>, gateway: Option<IpAddr>, addr: IpAddr| {
            // requested_addrs refused a family without a subnet; a subnet always has a gateway.
            let (Some(subnet), Some(gateway)) = (subnet, gateway) else {
                return Err(ApiError::internal(format!(
                    "network {} has no gateway for {addr}",
                    net.name
                )));
            };
            ipam::check_requested(subnet, gateway, addr, &holders).map_err(|e| {
                if e.is_conflict() {
                    ApiError::conflict(e.to_string())
                } else {
                    ApiError::invalid(e.to_string())
                }
            })
        };
        if let Some(a) = fixed4 {
            check(
                net.subnet4.map(IpNet::V4),
                net.gateway4.map(IpAddr::V4),
                IpAddr::V4(a),
            )?;
        }
        if let Some(a) = fixed6 {
            check(
                net.subnet6.map(IpNet::V6),
                net.gateway6.map(IpAddr::V6),
                IpAddr::V6(a),
            )?;
        }
        Ok((fixed4, fixed6))
    }

    pub fn endpoint(&self, key: &EndpointKey) -> Result<Attachment, ApiError> {
        let ep = self
            .endpoints
            .get(key)
            .ok_or_else(|| ApiError::not_found(format!("netd holds no endpoint {key}")))?;
        Ok(Attachment {
            network: self.network(&ep.network)?,
            endpoint: ep.clone(),
        })
    }

    /// After `ep` published UDP ports in NAT mode: deletes conntrack entries of earlier flows
    /// to those host ports, which would otherwise keep bypassing the new DNAT (see
    /// [`crate::conntrack`]). A failure is logged; the attach itself has succeeded.
    fn clear_stale_udp_flows(&mut self, net: &Network, ep: &Endpoint) {
        let udp: Vec<ports::Binding> = ep
            .ports
            .iter()
            .filter(|pm| pm.protocol == model::Proto::Udp)
            .flat_map(|pm| ports::bindings(net, pm))
            .filter(|b| match b.family {
                ports::Family::V4 => net.gateway_mode4 == GatewayMode::Nat,
                ports::Family::V6 => net.gateway_mode6 == GatewayMode::Nat,
            })
            .collect();
        if udp.is_empty() {
            return;
        }
        match self.kernel.clear_udp_conntrack(&udp) {
            Ok(n) => {
                info!(endpoint = %ep.key(), deleted = n, "cleared stale UDP conntrack entries")
            }
            Err(e) => {
                warn!(endpoint = %ep.key(), error = %e, "could not clear stale UDP conntrack entries")
            }
        }
    }

    /// Releases an endpoint with its addresses and ports. Returns false if there was none.
    /// CNI DEL with netd's help: releases the endpoint (if netd holds it) and removes its host
    /// veth, and with it the container's end, after the answer. Returns whether an endpoint
    /// was released.
    pub fn release(&mut self, key: &EndpointKey) -> Result<bool, ApiError> {
        let released = self.detach(key)?;
        self.kernel
            .remove_link_later(&model::host_veth_name(&key.container_id, &key.ifname));
        Ok(released)
    }

    pub fn detach(&mut self, key: &EndpointKey) -> Result<bool, ApiError> {
        let Some(ep) = self.endpoints.get(key).cloned() else {
            return Ok(false);
        };
        let net = self.network(&ep.network)?;
        let diff = self.apply_endpoint(&net, &ep, false)?;
        // Before the endpoint file goes: a crash in between keeps the endpoint, never a
        // released address behind a stale cursor.
        self.save_cursor(&net.name);
        if let Err(e) = self.store.delete_endpoint(key) {
            self.undo_diff(&diff);
            return Err(internal("removing the endpoint from state", e));
        }
        self.commit_diff(&diff);
        self.endpoints.remove(key);
        info!(endpoint = %key, "endpoint detached");
        self.clear_flows_of(&ep);
        Ok(true)
    }

    /// Persists a network's allocation cursor if it moved since it was last saved. Saving it
    /// when an address is released is enough: every address handed out after the saved
    /// cursor and before the next release is still in use at that release, so next-fit from
    /// the saved cursor skips them and lands where the in-memory one would. ADD stays one
    /// write. A failure is logged: the release itself goes on.
    fn save_cursor(&mut self, network: &str) {
        let cursor = ipam::Cursor {
            last4: self.last4.get(network).copied(),
            last6: self.last6.get(network).copied(),
        };
        if cursor == ipam::Cursor::default() || self.meta.cursors.get(network) == Some(&cursor) {
            return;
        }
        let mut meta = self.meta.clone();
        meta.cursors.insert(network.to_string(), cursor);
        match self.store.put_meta(&meta) {
            Ok(()) => self.meta = meta,
            Err(e) => warn!(network = %network, error = %e, "could not save the allocation cursor"),
        }
    }

    /// After `ep` was released (its table elements are gone): deletes the conntrack entries
    /// of its addresses, so a client's flow DNATed to it, or any flow from or to it, does not
    /// live on (UDP without end while the client keeps sending) and reach the next container
    /// that gets the address. A failure is logged; the release itself has succeeded.
    fn clear_flows_of(&mut self, ep: &Endpoint) {
        let addrs: Vec<IpAddr> = ep
            .addr4
            .map(IpAddr::V4)
            .into_iter()
            .chain(ep.addr6.map(IpAddr::V6))
            .collect();
        if addrs.is_empty() {
            return;
        }
        match self.kernel.clear_conntrack_of(&addrs) {
            Ok(n) => {
                info!(endpoint = %ep.key(), deleted = n, "cleared the released endpoint's conntrack entries")
            }
            Err(e) => {
                warn!(endpoint = %ep.key(), error = %e, "could not clear the released endpoint's conntrack entries")
            }
        }
    }

    /// CNI GC: releases the network's endpoints the runtime no longer lists.
    pub fn gc(&mut self, req: GcRequest) -> Result<Vec<Endpoint>, ApiError> {
        self.network(&req.network)?;
        let valid: BTreeSet<(String, String)> = req
            .valid
            .into_iter()
            .map(|a| (a.container_id, a.ifname))
            .collect();
        let stale: Vec<EndpointKey> = self
            .endpoints
            .values()
            .filter(|e| e.network == req.network)
            .filter(|e| !valid.contains(&(e.container_id.clone(), e.ifname.clone())))
            .map(Endpoint::key)
            .collect();
        let mut released = Vec::new();
        for key in stale {
            let ep = self.endpoints.get(&key).cloned();
            if self.detach(&key)? {
                released.extend(ep);
            }
        }
        Ok(released)
    }
}

/// An existing network matches a conflist's subnets when it has exactly those, per family.
/// Anything else is refused, naming both: attaching pods to a network other than the one the
/// node's configuration describes would give them addresses nobody routes.
fn same_subnets(spec: &CreateNetwork, net: &Network) -> Result<(), ApiError> {
    let list = |v4: Option<Ipv4Net>, v6: Option<Ipv6Net>| {
        let v: Vec<String> = v4
            .map(|s| s.to_string())
            .into_iter()
            .chain(v6.map(|s| s.to_string()))
            .collect();
        if v.is_empty() {
            "none".to_string()
        } else {
            v.join(", ")
        }
    };
    if spec.subnet != net.subnet4 || spec.subnet6 != net.subnet6 {
        return Err(ApiError::conflict(format!(
            "network {} exists with subnets {}, but the CNI configuration asks for {}; \
             fix the configuration's \"subnets\" or remove the network (netctl network rm {})",
            net.name,
            list(net.subnet4, net.subnet6),
            list(spec.subnet, spec.subnet6),
            net.name
        )));
    }
    Ok(())
}

/// Splits the fixed addresses of an attach request by family, refusing two of one family, a
/// family the network does not have, and a prefix that is not the subnet's.
fn requested_addrs(
    net: &Network,
    ips: &[model::RequestedAddr],
) -> Result<(Option<Ipv4Addr>, Option<Ipv6Addr>), ApiError> {
    let (mut v4, mut v6) = (None, None);
    for r in ips {
        let (subnet, slot_taken) = match r.addr {
            IpAddr::V4(a) => (net.subnet4.map(IpNet::V4), v4.replace(a).is_some()),
            IpAddr::V6(a) => (net.subnet6.map(IpNet::V6), v6.replace(a).is_some()),
        };
        let family = if r.addr.is_ipv4() { "IPv4" } else { "IPv6" };
        if slot_taken {
            return Err(ApiError::invalid(format!(
                "two {family} addresses asked for; network {} gives a container one address per family",
                net.name
            )));
        }
        let Some(subnet) = subnet else {
            return Err(ApiError::invalid(format!(
                "address {} asked for, but network {} has no {family} subnet",
                r.addr, net.name
            )));
        };
        if let Some(p) = r.prefix.filter(|p| *p != subnet.prefix_len()) {
            return Err(ApiError::invalid(format!(
                "address {r} asked for with prefix /{p}, but network {}'s subnet is {subnet}",
                net.name
            )));
        }
    }
    Ok((v4, v6))
}

/// `nd-NAME` when that fits an interface name, else `nd-` and a hash of the name.
pub fn default_bridge_name(network: &str) -> String {
    let plain = format!("nd-{network}");
    if model::validate_ifname(&plain).is_ok() {
        plain
    } else {
        format!("nd-{:012x}", model::fnv1a(&[network.as_bytes()]) >> 16)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::GcAttachment;
    use crate::model::{PortMapping, Proto};
    use std::sync::{Arc, Mutex};

    /// An in-memory table: applies diffs to a Desired, strictly like the kernel (a missing
    /// removal or a present addition refuses the whole batch), and can be told to fail.
    #[derive(Default)]
    struct FakeTable {
        table: Desired,
        /// How many of the next batches (diffs or full syncs) to refuse.
        fail_next: usize,
        batches: usize,
        /// Diffs refused because the table did not hold what they expected.
        refused: usize,
        links: Vec<HostLink>,
        gone_netns: Vec<String>,
        /// Addresses whose conntrack entries the engine asked to clear.
        cleared: Vec<IpAddr>,
    }

    struct FakeKernel(Arc<Mutex<FakeTable>>);

    impl Kernel for FakeKernel {
        fn sync_full(&mut self, desired: &Desired) -> Result<(), KernelError> {
            let mut t = self.0.lock().unwrap();
            if t.fail_next > 0 {
                t.fail_next -= 1;
                return Err(KernelError("injected failure".into()));
            }
            t.batches += 1;
            t.table = desired.clone();
            Ok(())
        }
        fn apply_diff(&mut self, diff: &Diff) -> Result<(), KernelError> {
            let mut t = self.0.lock().unwrap();
            if t.fail_next > 0 {
                t.fail_next -= 1;
                return Err(KernelError("injected failure".into()));
            }
            let mut next = t.table.clone();
            for (set, elems) in &diff.remove {
                for e in elems {
                    if !next.sets.get_mut(set).is_some_and(|s| s.remove(e)) {
                        t.refused += 1;
                        return Err(KernelError(format!("removing absent {e:?}: ENOENT")));
                    }
                }
            }
            for (set, elems) in &diff.add {
                for e in elems {
                    if !next.sets.entry(*set).or_default().insert(e.clone()) {
                        t.refused += 1;
                        return Err(KernelError(format!("adding present {e:?}: EEXIST")));
                    }
                }
            }
            t.batches += 1;
            t.table = next;
            Ok(())
        }
        fn routes(&mut self) -> Result<Vec<IpNet>, KernelError> {
            Ok(vec!["10.99.0.0/24".parse().unwrap()])
        }
        fn link_exists(&mut self, name: &str) -> Result<bool, KernelError> {
            Ok(name == "eth0" || self.0.lock().unwrap().links.iter().any(|l| l.name == name))
        }
        fn links(&mut self) -> Result<Vec<HostLink>, KernelError> {
            Ok(self.0.lock().unwrap().links.clone())
        }
        fn delete_link(&mut self, name: &str) -> Result<(), KernelError> {
            self.0.lock().unwrap().links.retain(|l| l.name != name);
            Ok(())
        }
        fn delete_owned_link(
            &mut self,
            name: &str,
            kind: &str,
            network: Option<&str>,
        ) -> Result<Removal, KernelError> {
            let mut t = self.0.lock().unwrap();
            let Some(l) = t.links.iter().find(|l| l.name == name) else {
                return Ok(Removal::Missing);
            };
            if l.kind.as_deref() != Some(kind)
                || l.owner.is_none()
                || network.is_some_and(|n| l.owner.as_deref() != Some(n))
            {
                return Ok(Removal::Foreign(format!("{l:?}")));
            }
            t.links.retain(|l| l.name != name);
            Ok(Removal::Deleted)
        }
        fn is_netns(&mut self, path: &str) -> bool {
            !self.0.lock().unwrap().gone_netns.iter().any(|p| p == path)
        }
        fn clear_conntrack_of(&mut self, addrs: &[IpAddr]) -> Result<usize, KernelError> {
            self.0.lock().unwrap().cleared.extend_from_slice(addrs);
            Ok(addrs.len())
        }
    }

    struct Fixture {
        dir: PathBuf,
        table: Arc<Mutex<FakeTable>>,
    }

    impl Fixture {
        fn new(tag: &str) -> Fixture {
            let dir =
                std::env::temp_dir().join(format!("netd-engine-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            Fixture {
                dir,
                table: Arc::default(),
            }
        }
        fn engine(&self) -> Engine {
            let cfg = EngineConfig {
                table: "netd".into(),
                socket: "/run/netd/netd.sock".into(),
                cni_conf_dir: self.dir.join("cni"),
                pool4: "10.99.0.0/16".parse().unwrap(),
                pool4_prefix: 24,
                ula_base: None,
                cni_version: "1.0.0".into(),
            };
            let store = Store::open(&self.dir.join("state")).unwrap();
            Engine::start(cfg, store, Box::new(FakeKernel(self.table.clone()))).unwrap()
        }
        fn table(&self) -> Desired {
            self.table.lock().unwrap().table.clone()
        }
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn create(name: &str) -> CreateNetwork {
        CreateNetwork {
            name: name.into(),
            ..Default::default()
        }
    }

    fn attach(net: &str, cid: &str, ports: Vec<PortMapping>) -> AttachRequest {
        AttachRequest {
            network: net.into(),
            container_id: cid.into(),
            ifname: "eth0".into(),
            netns: format!("/run/netns/{cid}"),
            port_mappings: ports,
            ips: vec![],
            mac: None,
            ensure_network: None,
        }
    }

    fn tcp(host: u16) -> PortMapping {
        PortMapping {
            host_port: host,
            container_port: 80,
            protocol: Proto::Tcp,
            host_ip: None,
        }
    }

    #[test]
    fn networks_get_free_subnets_conflists_and_survive_restart() {
        let fx = Fixture::new("nets");
        let mut e = fx.engine();
        let a = e.create_network(create("a")).unwrap();
        // 10.99.0.0/24 is a host route in the fake kernel.
        assert_eq!(a.subnet4.unwrap().to_string(), "10.99.1.0/24");
        assert_eq!(a.gateway4.unwrap().to_string(), "10.99.1.1");
        assert_eq!(a.bridge, "nd-a");
        let b = e.create_network(create("b")).unwrap();
        assert_eq!(b.subnet4.unwrap().to_string(), "10.99.2.0/24");
        assert!(fx.dir.join("cni/netd-a.conflist").exists());

        let err = e
            .create_network(CreateNetwork {
                subnet: Some("10.99.2.128/25".parse().unwrap()),
                ..create("c")
            })
            .unwrap_err();
        assert_eq!(err.kind, crate::api::ErrorKind::Conflict);
        assert!(err.message.contains("network b"), "{}", err.message);
        let err = e.create_network(create("a")).unwrap_err();
        assert_eq!(err.kind, crate::api::ErrorKind::Conflict);
        let err = e
            .create_network(CreateNetwork {
                bridge: Some("eth0".into()),
                ..create("d")
            })
            .unwrap_err();
        assert!(
            err.message.contains("eth0 already exists"),
            "{}",
            err.message
        );
        let err = e
            .create_network(CreateNetwork {
                internal: true,
                gateway_mode_ipv4: Some(GatewayMode::Routed),
                ..create("e")
            })
            .unwrap_err();
        assert_eq!(err.kind, crate::api::ErrorKind::Invalid);

        let table = fx.table();
        drop(e);
        let e = fx.engine();
        assert_eq!(e.networks().count(), 2);
        assert_eq!(fx.table(), table);
    }

    #[test]
    fn a_network_keeps_its_cni_version_across_restarts() {
        let fx = Fixture::new("cniver");
        let mut e = fx.engine();
        let conflist = |name: &str| -> serde_json::Value {
            let p = fx.dir.join(format!("cni/netd-{name}.conflist"));
            serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
        };
        let new = e
            .create_network(CreateNetwork {
                cni_version: Some("1.1.0".into()),
                ..create("new")
            })
            .unwrap();
        assert_eq!(new.cni_version, "1.1.0");
        let old = e.create_network(create("old")).unwrap();
        assert_eq!(old.cni_version, "1.0.0", "the daemon's default");
        let err = e
            .create_network(CreateNetwork {
                cni_version: Some("1.2.0".into()),
                ..create("bad")
            })
            .unwrap_err();
        assert_eq!(err.kind, crate::api::ErrorKind::Invalid);
        assert!(err.message.contains("\"1.2.0\""), "{}", err.message);
        assert!(!fx.dir.join("cni/netd-bad.conflist").exists());
        drop(e);

        // A stale conflist is rewritten at start with the version the network remembers.
        std::fs::write(fx.dir.join("cni/netd-new.conflist"), "{}").unwrap();
        let e = fx.engine();
        assert_eq!(e.network("new").unwrap().cni_version, "1.1.0");
        assert_eq!(conflist("new")["cniVersion"], "1.1.0");
        assert_eq!(conflist("old")["cniVersion"], "1.0.0");
    }

    #[test]
    fn endpoints_allocate_unique_addresses_and_ports_conflict() {
        let fx = Fixture::new("eps");
        let mut e = fx.engine();
        e.create_network(create("a")).unwrap();
        let one = e.attach(attach("a", "c1", vec![tcp(8080)])).unwrap();
        let two = e.attach(attach("a", "c2", vec![])).unwrap();
        assert_ne!(one.endpoint.addr4, two.endpoint.addr4);
        let err = e.attach(attach("a", "c3", vec![tcp(8080)])).unwrap_err();
        assert_eq!(err.kind, crate::api::ErrorKind::Conflict);
        assert!(err.message.contains("container c1"), "{}", err.message);
        let err = e.attach(attach("a", "c1", vec![])).unwrap_err();
        assert_eq!(err.kind, crate::api::ErrorKind::Conflict);
        // Mappings that can never work are invalid, not conflicts.
        let v6 = PortMapping {
            host_ip: Some("2001:db8::1".parse().unwrap()),
            ..tcp(8081)
        };
        for bad in [vec![tcp(0)], vec![v6], vec![tcp(8082), tcp(8082)]] {
            let err = e.attach(attach("a", "c4", bad.clone())).unwrap_err();
            assert_eq!(err.kind, crate::api::ErrorKind::Invalid, "{bad:?}: {err}");
        }
        e.create_network(CreateNetwork {
            internal: true,
            ..create("inner")
        })
        .unwrap();
        let err = e
            .attach(attach("inner", "c4", vec![tcp(8083)]))
            .unwrap_err();
        assert_eq!(err.kind, crate::api::ErrorKind::Invalid, "{err}");
        let err = e.attach(attach("nope", "c9", vec![])).unwrap_err();
        assert_eq!(err.kind, crate::api::ErrorKind::NotFound);
        let err = e.attach(attach("a", "bad/id", vec![])).unwrap_err();
        assert_eq!(err.kind, crate::api::ErrorKind::Invalid);

        let err = e.remove_network("a").unwrap_err();
        assert_eq!(err.kind, crate::api::ErrorKind::Conflict);

        // Keyed by (container, ifname): releasing c1 frees its port for c3.
        assert!(e.detach(&one.endpoint.key()).unwrap());
        assert!(!e.detach(&one.endpoint.key()).unwrap());
        let three = e.attach(attach("a", "c3", vec![tcp(8080)])).unwrap();
        // The released address is not reused at once.
        assert_ne!(three.endpoint.addr4, one.endpoint.addr4);
        let table = fx.table();
        assert_eq!(table.elems(plan::SetId::Dnat4Any).count(), 1);
        // Every diff the engine sent matched the table: no whole-table retry hid a bad one.
        assert_eq!(fx.table.lock().unwrap().refused, 0);
        // Applying endpoints one by one gives the table the planner computes for the state.
        let whole = plan::desired(e.networks(), e.endpoints());
        assert!(table.diff(&whole).is_empty(), "{:?}", table.diff(&whole));
        drop(e);
        let e = fx.engine();
        assert!(fx
            .table()
            .diff(&plan::desired(e.networks(), e.endpoints()))
            .is_empty());
    }

    #[test]
    fn fixed_addresses_are_checked_kept_and_never_handed_out_again() {
        use crate::api::ErrorKind;
        let fx = Fixture::new("fixed");
        let mut e = fx.engine();
        e.create_network(CreateNetwork {
            subnet: Some("10.50.0.0/24".parse().unwrap()),
            ..create("a")
        })
        .unwrap();
        let fixed = |cid: &str, ips: &[&str]| AttachRequest {
            ips: ips.iter().map(|i| i.parse().unwrap()).collect(),
            ..attach("a", cid, vec![])
        };
        let one = e
            .attach(AttachRequest {
                mac: Some("02:42:0a:32:00:02".parse().unwrap()),
                ..fixed("c1", &["10.50.0.2/24"])
            })
            .unwrap();
        assert_eq!(one.endpoint.addr4.unwrap().to_string(), "10.50.0.2");
        // (IPv6 needs forwarding in the netns: tests/netns/tests/fixed_ip.rs covers it.)
        let two = e.attach(fixed("c2", &["10.50.0.200"])).unwrap();
        assert_eq!(two.endpoint.addr4.unwrap().to_string(), "10.50.0.200");
        // A dynamic allocation skips both fixed addresses.
        let three = e.attach(attach("a", "c3", vec![])).unwrap();
        assert_eq!(three.endpoint.addr4.unwrap().to_string(), "10.50.0.3");

        let before = fx.table();
        let refused = [
            (
                vec!["10.50.0.2"],
                ErrorKind::Conflict,
                "taken by container c1 eth0",
            ),
            (
                vec!["10.50.0.200"],
                ErrorKind::Conflict,
                "taken by container c2 eth0",
            ),
            (
                vec!["fd00:50::3"],
                ErrorKind::Invalid,
                "network a has no IPv6 subnet",
            ),
            (vec!["10.50.0.1"], ErrorKind::Invalid, "is the gateway"),
            (vec!["10.50.0.0"], ErrorKind::Invalid, "network address"),
            (vec!["10.50.0.255"], ErrorKind::Invalid, "broadcast address"),
            (
                vec!["10.50.1.9"],
                ErrorKind::Invalid,
                "outside the network's subnet 10.50.0.0/24",
            ),
            (vec!["10.50.0.9/16"], ErrorKind::Invalid, "prefix /16"),
            (
                vec!["10.50.0.9", "10.50.0.10"],
                ErrorKind::Invalid,
                "two IPv4 addresses",
            ),
        ];
        for (ips, kind, text) in refused {
            let err = e.attach(fixed("c9", &ips)).unwrap_err();
            assert_eq!(err.kind, kind, "{ips:?}: {}", err.message);
            assert!(err.message.contains(text), "{ips:?}: {}", err.message);
            assert_eq!(fx.table(), before, "{ips:?} changed the table");
            let c9 = EndpointKey {
                network: "a".into(),
                container_id: "c9".into(),
                ifname: "eth0".into(),
            };
            assert!(e.endpoint(&c9).is_err());
        }
        // After a restart the fixed addresses and the MAC are still held.
        drop(e);
        let mut e = fx.engine();
        let key = one.endpoint.key();
        let again = e.endpoint(&key).unwrap().endpoint;
        assert_eq!(again.mac.unwrap().to_string(), "02:42:0a:32:00:02");
        let err = e.attach(fixed("c9", &["10.50.0.200"])).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Conflict);
        let four = e.attach(attach("a", "c4", vec![])).unwrap();
        assert_eq!(four.endpoint.addr4.unwrap().to_string(), "10.50.0.4");
    }

    #[test]
    fn an_attach_may_create_its_network_once_and_refuses_other_subnets() {
        use crate::api::ErrorKind;
        let fx = Fixture::new("ensure");
        let mut e = fx.engine();
        let spec = |subnet: &str| CreateNetwork {
            subnet: Some(subnet.parse().unwrap()),
            cni_version: Some("1.1.0".into()),
            ..create("pods")
        };
        let ensure = |cid: &str, subnet: &str, ports: Vec<PortMapping>| AttachRequest {
            ensure_network: Some(spec(subnet)),
            ..attach("pods", cid, ports)
        };
        // Without the spec an unknown network is still an error.
        let err = e.attach(attach("pods", "c0", vec![])).unwrap_err();
        assert_eq!(err.kind, ErrorKind::NotFound);

        let one = e.attach(ensure("c1", "10.244.1.0/24", vec![])).unwrap();
        assert_eq!(one.network.subnet4.unwrap().to_string(), "10.244.1.0/24");
        assert_eq!(one.network.cni_version, "1.1.0");
        assert!(fx.dir.join("cni/netd-pods.conflist").exists());
        let two = e.attach(ensure("c2", "10.244.1.0/24", vec![])).unwrap();
        assert_eq!(
            two.network, one.network,
            "the same network, not a second one"
        );
        assert_eq!(e.networks().count(), 1);

        let before = fx.table();
        let err = e.attach(ensure("c3", "10.244.2.0/24", vec![])).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Conflict);
        assert!(
            err.message.contains("exists with subnets 10.244.1.0/24")
                && err.message.contains("asks for 10.244.2.0/24"),
            "{}",
            err.message
        );
        assert_eq!(fx.table(), before);
        let err = e
            .attach(AttachRequest {
                ensure_network: Some(CreateNetwork {
                    name: "other".into(),
                    ..spec("10.244.1.0/24")
                }),
                ..attach("pods", "c3", vec![])
            })
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Invalid);

        // A failed attach takes the network it created with it.
        e.create_network(create("web")).unwrap();
        e.attach(attach("web", "w1", vec![tcp(8080)])).unwrap();
        let before = fx.table();
        let err = e
            .attach(AttachRequest {
                ensure_network: Some(CreateNetwork {
                    name: "fresh".into(),
                    ..spec("10.245.0.0/24")
                }),
                ..attach("fresh", "f1", vec![tcp(8080)])
            })
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Conflict);
        assert!(e.network("fresh").is_err());
        assert!(!fx.dir.join("cni/netd-fresh.conflist").exists());
        assert_eq!(fx.table(), before);

        drop(e);
        let e = fx.engine();
        assert_eq!(e.network("pods").unwrap().subnet4, one.network.subnet4);
        assert!(e.network("fresh").is_err());
    }

    #[test]
    fn release_clears_flows_and_the_cursor_survives_a_restart() {
        let fx = Fixture::new("cursor");
        let mut e = fx.engine();
        e.create_network(create("a")).unwrap();
        let one = e
            .attach(attach("a", "c1", vec![tcp(8080)]))
            .unwrap()
            .endpoint;
        assert!(fx.table.lock().unwrap().cleared.is_empty());
        assert!(e.release(&one.key()).unwrap());
        assert_eq!(
            fx.table.lock().unwrap().cleared,
            vec![IpAddr::V4(one.addr4.unwrap())]
        );
        // A restarted netd continues after the released address instead of handing it out
        // again at once.
        drop(e);
        let mut e = fx.engine();
        let two = e.attach(attach("a", "c2", vec![])).unwrap().endpoint;
        assert_ne!(two.addr4, one.addr4);
        assert_eq!(
            u32::from(two.addr4.unwrap()),
            u32::from(one.addr4.unwrap()) + 1
        );
        // Removing the network forgets its cursor.
        e.release(&two.key()).unwrap();
        e.remove_network("a").unwrap();
        drop(e);
        let e = fx.engine();
        assert!(e.meta.cursors.is_empty());
    }

    #[test]
    fn a_kernel_failure_changes_nothing() {
        let fx = Fixture::new("fail");
        let mut e = fx.engine();
        e.create_network(create("a")).unwrap();
        let before = fx.table();
        // The diff and the whole-table retry are both refused.
        fx.table.lock().unwrap().fail_next = 2;
        let err = e.attach(attach("a", "c1", vec![tcp(80)])).unwrap_err();
        assert_eq!(err.kind, crate::api::ErrorKind::Internal);
        assert_eq!(fx.table(), before);
        assert_eq!(e.endpoints().count(), 0);
        drop(e);
        assert_eq!(fx.engine().endpoints().count(), 0);
    }

    /// An element deleted (or added) behind netd's back makes the next diff fail; the
    /// engine then applies the whole table in the same call, so ADD and DEL keep working.
    #[test]
    fn a_refused_diff_is_healed_by_a_full_sync_in_the_same_call() {
        let fx = Fixture::new("drift");
        let mut e = fx.engine();
        e.create_network(create("a")).unwrap();
        let one = e
            .attach(attach("a", "c1", vec![tcp(8080)]))
            .unwrap()
            .endpoint;
        // Someone deletes c1's DNAT element.
        let elem = fx
            .table()
            .elems(plan::SetId::Dnat4Any)
            .next()
            .unwrap()
            .clone();
        fx.table
            .lock()
            .unwrap()
            .table
            .sets
            .get_mut(&plan::SetId::Dnat4Any)
            .unwrap()
            .remove(&elem);
        assert!(e.detach(&one.key()).unwrap());
        assert_eq!(fx.table.lock().unwrap().refused, 1);
        let whole = plan::desired(e.networks(), e.endpoints());
        assert!(fx.table().diff(&whole).is_empty());

        // Someone adds an element a change is about to add: network b's bridge.
        fx.table
            .lock()
            .unwrap()
            .table
            .insert(plan::sets::BRIDGES, plan::shape::Iface("nd-b".into()));
        e.create_network(create("b")).unwrap();
        assert_eq!(fx.table.lock().unwrap().refused, 2);
        e.attach(attach("b", "c2", vec![tcp(8081)])).unwrap();
        let whole = plan::desired(e.networks(), e.endpoints());
        assert!(
            fx.table().diff(&whole).is_empty(),
            "{:?}",
            fx.table().diff(&whole)
        );
        assert_eq!(fx.table().elems(plan::SetId::Dnat4Any).count(), 1);
    }

    #[test]
    fn gc_releases_what_the_runtime_no_longer_lists() {
        let fx = Fixture::new("gc");
        let mut e = fx.engine();
        e.create_network(create("a")).unwrap();
        e.attach(attach("a", "keep", vec![])).unwrap();
        e.attach(attach("a", "stale", vec![tcp(9000)])).unwrap();
        let released = e
            .gc(GcRequest {
                network: "a".into(),
                valid: vec![GcAttachment {
                    container_id: "keep".into(),
                    ifname: "eth0".into(),
                }],
            })
            .unwrap();
        assert_eq!(released.len(), 1);
        assert_eq!(released[0].container_id, "stale");
        assert_eq!(e.endpoints().count(), 1);
        assert_eq!(fx.table().elems(plan::SetId::Dnat4Any).count(), 0);
    }

    #[test]
    fn network_removal_cleans_table_and_conflist() {
        let fx = Fixture::new("rm");
        let mut e = fx.engine();
        e.create_network(create("a")).unwrap();
        e.create_network(create("b")).unwrap();
        {
            // a's bridge made by the plugin; a link named like b's bridge that netd did not
            // make (created after the network, before its first ADD).
            let mut t = fx.table.lock().unwrap();
            for (name, owner) in [("nd-a", Some("a")), ("nd-b", None)] {
                t.links.push(HostLink {
                    name: name.into(),
                    kind: Some("bridge".into()),
                    owner: owner.map(str::to_string),
                });
            }
        }
        e.remove_network("b").unwrap();
        e.remove_network("a").unwrap();
        let left: Vec<String> = fx
            .table
            .lock()
            .unwrap()
            .links
            .iter()
            .map(|l| l.name.clone())
            .collect();
        assert_eq!(left, ["nd-b"]);
        assert!(fx.table().is_empty());
        assert!(!fx.dir.join("cni/netd-a.conflist").exists());
        assert_eq!(
            e.remove_network("a").unwrap_err().kind,
            crate::api::ErrorKind::NotFound
        );
    }

    #[test]
    fn reconciliation_releases_dead_endpoints_and_orphan_links_only() {
        let fx = Fixture::new("reconcile");
        let mut e = fx.engine();
        e.create_network(create("a")).unwrap();
        let alive = e.attach(attach("a", "alive", vec![])).unwrap().endpoint;
        let gone = e
            .attach(attach("a", "gone", vec![tcp(8080)]))
            .unwrap()
            .endpoint;
        let young = e.attach(attach("a", "young", vec![])).unwrap().endpoint;
        {
            let mut t = fx.table.lock().unwrap();
            let link = |n: &str, kind: Option<&str>, owner: Option<&str>| HostLink {
                name: n.into(),
                kind: kind.map(str::to_string),
                owner: owner.map(str::to_string),
            };
            let veth = |n: &str, owner| link(n, Some("veth"), owner);
            t.links = vec![
                link("nd-a", Some("bridge"), Some("a")),
                link("nd-old", Some("bridge"), Some("old")),
                // Named like netd's but not marked: someone else's.
                link("nd-foreign", Some("bridge"), None),
                link("docker0", Some("bridge"), None),
                // Marked, but not a bridge or veth: never netd's to remove.
                link("nd-dummy", Some("dummy"), Some("old")),
                veth(&alive.host_veth, Some("a")),
                veth(&gone.host_veth, Some("a")),
                veth("vn0000000000000", Some("a")),
                veth("vnfoo", None),
                veth("veth-foreign", None),
                link("eth1", None, None),
            ];
            // "young" has no veth yet, as if its ADD were still building links.
            t.gone_netns = vec![gone.netns.clone()];
        }
        let report = e.reconcile_links().unwrap();
        assert_eq!(report.released, vec![gone.key()]);
        assert_eq!(report.bridges_removed, vec!["nd-old".to_string()]);
        let mut veths = report.veths_removed.clone();
        veths.sort();
        let mut want = vec![gone.host_veth.clone(), "vn0000000000000".to_string()];
        want.sort();
        assert_eq!(veths, want);
        let left: Vec<String> = fx
            .table
            .lock()
            .unwrap()
            .links
            .iter()
            .map(|l| l.name.clone())
            .collect();
        for keep in [
            "nd-a",
            "nd-foreign",
            "nd-dummy",
            "docker0",
            "vnfoo",
            "veth-foreign",
            "eth1",
            alive.host_veth.as_str(),
        ] {
            assert!(left.iter().any(|l| l == keep), "{keep} was removed");
        }
        assert!(e.endpoint(&young.key()).is_ok());
        assert_eq!(fx.table().elems(plan::SetId::Dnat4Any).count(), 0);
    }

    #[test]
    fn a_network_holds_no_more_endpoints_than_a_bridge_has_ports() {
        let fx = Fixture::new("full");
        let mut e = fx.engine();
        e.create_network(CreateNetwork {
            subnet: Some("10.98.0.0/20".parse().unwrap()),
            ..create("big")
        })
        .unwrap();
        for i in 0..MAX_BRIDGE_PORTS {
            e.attach(attach("big", &format!("c{i}"), vec![])).unwrap();
        }
        let err = e.attach(attach("big", "one-too-many", vec![])).unwrap_err();
        assert_eq!(err.kind, crate::api::ErrorKind::Conflict);
        assert!(err.message.contains("1023 ports"), "{}", err.message);
    }

    #[test]
    fn long_names_get_hashed_bridges() {
        assert_eq!(default_bridge_name("web"), "nd-web");
        let long = default_bridge_name("a-rather-long-network-name");
        assert_eq!(long.len(), 15);
        assert!(long.starts_with("nd-"));
    }
}
