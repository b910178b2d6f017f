//! The engine owns netd's state and keeps the kernel in step with it. Every change takes one
//! path: validate against the state, compute the new desired table ([`crate::plan`]), apply the
//! element diff as one nftables batch, persist the changed object, then commit in memory. If the
//! kernel refuses, nothing was persisted; if persisting fails, the table change is reverted.
//! Either way the state, the table and the disk agree when the call returns.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use tracing::{info, warn};

use crate::api::{ApiError, AttachRequest, Attachment, CreateNetwork, GcRequest, Status};
use crate::conflist;
use crate::ipam;
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
    /// Names and kinds ("bridge", "veth", ...) of the host's links.
    fn links(&mut self) -> Result<Vec<(String, Option<String>)>, KernelError>;
    /// Removes a link (a network's bridge, a leaked host veth). A missing link is not an error.
    fn delete_link(&mut self, name: &str) -> Result<(), KernelError>;
    /// Whether `path` is (still) a network namespace.
    fn is_netns(&mut self, path: &str) -> bool;
    /// Deletes the UDP conntrack entries whose original destination is one of `bindings`
    /// (see [`crate::conntrack`]) and returns how many; the default has none to delete.
    fn clear_udp_conntrack(&mut self, _bindings: &[ports::Binding]) -> Result<usize, KernelError> {
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

/// Host veths carry this prefix ([`model::host_veth_name`]) and bridges that netd names itself
/// [`BRIDGE_PREFIX`]; reconciliation only ever removes links with these prefixes.
pub const VETH_PREFIX: &str = "vn";
pub const BRIDGE_PREFIX: &str = "nd-";

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
}

pub struct Engine {
    cfg: EngineConfig,
    /// Shared with the server, which finishes deferred changes after releasing the lock.
    store: Arc<Store>,
    kernel: Box<dyn Kernel>,
    meta: Meta,
    networks: BTreeMap<String, Network>,
    endpoints: BTreeMap<EndpointKey, Endpoint>,
    /// What netd's table holds now.
    applied: Desired,
    /// The address handed out last per network, so released ones are not reused at once.
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
        let mut engine = Engine {
            cfg,
            store: Arc::new(store),
            kernel,
            meta: loaded.meta,
            networks,
            endpoints,
            applied: desired,
            last4: BTreeMap::new(),
            last6: BTreeMap::new(),
            started: SystemTime::now(),
        };
        engine.sync_conflists()?;
        Ok(engine)
    }

    /// The state store, for the server to finish deferred changes outside the engine lock
    /// (see [`crate::store`], group commit).
    pub fn store(&self) -> Arc<Store> {
        self.store.clone()
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
            self.kernel
                .apply_diff(&diff)
                .map_err(|e| internal("updating the nftables table", e))?;
        }
        Ok(desired)
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
            self.kernel
                .apply_diff(&diff)
                .map_err(|e| internal("updating the nftables table", e))?;
        }
        Ok(diff)
    }

    /// Records an applied diff in `self.applied`.
    fn commit_diff(&mut self, diff: &Diff) {
        for (set, elems) in &diff.remove {
            if let Some(s) = self.applied.sets.get_mut(set) {
                for e in elems {
                    s.remove(e);
                }
            }
        }
        for (set, elems) in &diff.add {
            self.applied.insert_all(*set, elems.iter().cloned());
        }
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
    /// removes host veths no endpoint claims and netd-named bridges no network claims.
    /// Links without netd's prefixes are never touched.
    pub fn reconcile_links(&mut self) -> Result<Reconciled, ApiError> {
        let mut report = Reconciled::default();
        let links = self
            .kernel
            .links()
            .map_err(|e| internal("listing links", e))?;
        let names: BTreeSet<&str> = links.iter().map(|(n, _)| n.as_str()).collect();
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
        for (name, kind) in &links {
            let orphan_veth = kind.as_deref() == Some("veth")
                && name.starts_with(VETH_PREFIX)
                && !claimed_veths.contains(name.as_str());
            let orphan_bridge = kind.as_deref() == Some("bridge")
                && name.starts_with(BRIDGE_PREFIX)
                && !claimed_bridges.contains(name.as_str());
            if orphan_veth || orphan_bridge {
                match self.kernel.delete_link(name) {
                    Ok(()) => {
                        info!(link = %name, "removed a link netd made that nothing claims");
                        if orphan_veth {
                            report.veths_removed.push(name.clone());
                        } else {
                            report.bridges_removed.push(name.clone());
                        }
                    }
                    Err(e) => warn!(link = %name, error = %e, "could not remove orphan link"),
                }
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
        let path = self.cfg.cni_conf_dir.join(conflist::file_name(name));
        if let Err(e) = std::fs::remove_file(&path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                warn!(path = %path.display(), error = %e, "could not remove conflist");
            }
        }
        if let Err(e) = self.kernel.delete_link(&net.bridge) {
            warn!(bridge = %net.bridge, error = %e, "could not remove the bridge");
        }
        info!(network = %name, "network removed");
        Ok(())
    }

    fn write_conflist(&self, net: &Network) -> Result<(), ApiError> {
        let dir = &self.cfg.cni_conf_dir;
        std::fs::create_dir_all(dir)
            .map_err(|e| internal(&format!("creating {}", dir.display()), e))?;
        let text = conflist::render(&net.name, &self.cfg.socket.to_string_lossy());
        store::write_atomic(&dir.join(conflist::file_name(&net.name)), text.as_bytes())
            .map_err(|e| internal("writing the conflist", e))
    }

    /// Rewrites conflists that are missing or stale (another socket path), and removes netd's
    /// conflists for networks that no longer exist. Other files are never touched.
    fn sync_conflists(&mut self) -> Result<(), ApiError> {
        for net in self.networks.values() {
            let path = self.cfg.cni_conf_dir.join(conflist::file_name(&net.name));
            let want = conflist::render(&net.name, &self.cfg.socket.to_string_lossy());
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

    pub fn attach(&mut self, req: AttachRequest) -> Result<Attachment, ApiError> {
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
        ports::check(&net, &req.port_mappings, existing)
            .map_err(|e| ApiError::conflict(e.to_string()))?;
        refuse_ipv6_loopback(&req.port_mappings)?;

        let addr4 = match (net.subnet4, net.gateway4) {
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
        if let Some(a) = addr4 {
            self.last4.insert(net.name.clone(), a);
        }
        if let Some(a) = addr6 {
            self.last6.insert(net.name.clone(), a);
        }
        info!(endpoint = %key, addr4 = ?addr4, addr6 = ?addr6, ports = ep.ports.len(), "endpoint attached");
        Ok(Attachment {
            network: net,
            endpoint: ep,
        })
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
        if let Err(e) = self.store.delete_endpoint(key) {
            self.undo_diff(&diff);
            return Err(internal("removing the endpoint from state", e));
        }
        self.commit_diff(&diff);
        self.endpoints.remove(key);
        info!(endpoint = %key, "endpoint detached");
        Ok(true)
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

    /// An in-memory table: applies diffs to a Desired, and can be told to fail.
    #[derive(Default)]
    struct FakeTable {
        table: Desired,
        fail_next: bool,
        batches: usize,
        links: Vec<(String, Option<String>)>,
        gone_netns: Vec<String>,
    }

    struct FakeKernel(Arc<Mutex<FakeTable>>);

    impl Kernel for FakeKernel {
        fn sync_full(&mut self, desired: &Desired) -> Result<(), KernelError> {
            let mut t = self.0.lock().unwrap();
            t.batches += 1;
            t.table = desired.clone();
            Ok(())
        }
        fn apply_diff(&mut self, diff: &Diff) -> Result<(), KernelError> {
            let mut t = self.0.lock().unwrap();
            if std::mem::take(&mut t.fail_next) {
                return Err(KernelError("injected failure".into()));
            }
            t.batches += 1;
            for (set, elems) in &diff.remove {
                for e in elems {
                    assert!(
                        t.table.sets.get_mut(set).unwrap().remove(e),
                        "removing absent {e:?}"
                    );
                }
            }
            for (set, elems) in &diff.add {
                for e in elems {
                    assert!(
                        t.table.sets.entry(*set).or_default().insert(e.clone()),
                        "adding present {e:?}"
                    );
                }
            }
            Ok(())
        }
        fn routes(&mut self) -> Result<Vec<IpNet>, KernelError> {
            Ok(vec!["10.99.0.0/24".parse().unwrap()])
        }
        fn link_exists(&mut self, name: &str) -> Result<bool, KernelError> {
            Ok(name == "eth0" || self.0.lock().unwrap().links.iter().any(|(n, _)| n == name))
        }
        fn links(&mut self) -> Result<Vec<(String, Option<String>)>, KernelError> {
            Ok(self.0.lock().unwrap().links.clone())
        }
        fn delete_link(&mut self, name: &str) -> Result<(), KernelError> {
            self.0.lock().unwrap().links.retain(|(n, _)| n != name);
            Ok(())
        }
        fn is_netns(&mut self, path: &str) -> bool {
            !self.0.lock().unwrap().gone_netns.iter().any(|p| p == path)
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
    fn a_kernel_failure_changes_nothing() {
        let fx = Fixture::new("fail");
        let mut e = fx.engine();
        e.create_network(create("a")).unwrap();
        let before = fx.table();
        fx.table.lock().unwrap().fail_next = true;
        let err = e.attach(attach("a", "c1", vec![tcp(80)])).unwrap_err();
        assert_eq!(err.kind, crate::api::ErrorKind::Internal);
        assert_eq!(fx.table(), before);
        assert_eq!(e.endpoints().count(), 0);
        drop(e);
        assert_eq!(fx.engine().endpoints().count(), 0);
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
        e.remove_network("a").unwrap();
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
            let veth = |n: &str| (n.to_string(), Some("veth".to_string()));
            t.links = vec![
                ("nd-a".into(), Some("bridge".into())),
                ("nd-old".into(), Some("bridge".into())),
                ("docker0".into(), Some("bridge".into())),
                veth(&alive.host_veth),
                veth(&gone.host_veth),
                veth("vn0000000000000"),
                veth("veth-foreign"),
                ("eth1".into(), None),
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
            .map(|l| l.0.clone())
            .collect();
        for keep in [
            "nd-a",
            "docker0",
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
