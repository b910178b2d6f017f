//! The engine owns netd's state and keeps the kernel in step with it. Every change takes one
//! path: gather the facts the request needs (state, host routes, links), let the pure core
//! resolve it into the object to store ([`crate::resolve`]), apply the table change as one
//! nftables batch, persist the object, then commit in memory. If the kernel refuses, nothing
//! was persisted; if persisting fails, the table change is reverted. Either way the state, the
//! table and the disk agree when the call returns.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use tracing::{debug, info, warn};

use super::sysctl::ForwardingError;
use crate::api::{AttachRequest, Attachment, CreateNetwork, GcRequest, Status};
use crate::conflist;
use crate::endpoints::Endpoints;
use crate::ipam::{self, Cursor};
use crate::link::Removal;
use crate::model::{self, Endpoint, EndpointKey, Network};
use crate::plan::{self, Desired, Diff};
use crate::ports;
use crate::resolve::{self, EndpointRequest, NetworkRequest, ResolveError};
use crate::store::{self, Meta, Op, Store, StoreError};

#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct KernelError(pub String);

/// netd's nftables table.
pub trait TableWriter: Send {
    /// Replaces netd's table (chains, rules, every element) with `desired` in one batch.
    fn sync_full(&mut self, desired: &Desired) -> Result<(), KernelError>;
    /// Applies element changes in one batch.
    fn apply_diff(&mut self, diff: &Diff) -> Result<(), KernelError>;
}

/// The host's links, as far as the engine looks at or removes them (the plugin makes them).
pub trait HostLinks: Send {
    /// The host's links: names, kinds and whose they are by netd's mark.
    fn links(&mut self) -> Result<Vec<HostLink>, KernelError>;
    fn link_exists(&mut self, name: &str) -> Result<bool, KernelError>;
    /// Removes link `name` only if it is of `kind` and carries netd's mark (of `network`
    /// when given): see [`crate::link::HostLinks::delete_owned`].
    fn delete_owned_link(
        &mut self,
        name: &str,
        kind: &str,
        network: Option<&str>,
    ) -> Result<Removal, KernelError>;
    /// Removes a host link (a DEL's host veth; a missing one is no error) of `network` after
    /// the current request is answered: see [`super::reaper`]. `netns`: the released
    /// endpoint's container netns, whose unmarked pair of this name is removed too.
    fn remove_link_later(&mut self, name: &str, network: &str, netns: Option<&str>);
    /// Returns once no removal of `name` is pending, so its name can be used again.
    fn settle_link(&mut self, name: &str);
    /// Returns once at most `keep` removals of `network`'s links are pending (doing queued
    /// ones at once), so that its bridge has room for the ports it must take.
    fn settle_links_of(&mut self, network: &str, keep: usize);
    /// Whether `path` is (still) a network namespace.
    fn is_netns(&mut self, path: &str) -> bool;
}

/// What the host contributes to a new network's resolution.
pub trait HostFacts: Send {
    /// Destinations of the host's routes (to keep automatic subnets clear of them).
    fn routes(&mut self) -> Result<Vec<IpNet>, KernelError>;
    /// Whether the host forwards IPv6, which a network with IPv6 needs (netd never turns
    /// it on itself: see [`super::sysctl`]).
    fn ipv6_forwarding(&mut self) -> Result<(), ForwardingError>;
}

/// Connection tracking: flows that would outlive a change of the table.
pub trait Flows: Send {
    /// Deletes the UDP conntrack entries whose original destination is one of `bindings`
    /// (see [`crate::conntrack`]) and returns how many.
    fn clear_udp_conntrack(&mut self, bindings: &[ports::Binding]) -> Result<usize, KernelError>;
    /// Deletes the conntrack entries that involve one of `addrs` (a released endpoint's; see
    /// [`crate::conntrack::clear_addrs`]) after the request is answered: see
    /// [`super::sweeper`].
    fn clear_conntrack_later(&mut self, addrs: &[IpAddr]);
    /// Returns once no such deletion is pending for any of `addrs`, before they are handed
    /// out again.
    fn settle_conntrack(&mut self, addrs: &[IpAddr]);
}

/// Everything the engine drives in the kernel. The real one is [`super::host::HostKernel`];
/// unit tests use an in-memory one.
pub trait Kernel: TableWriter + HostLinks + HostFacts + Flows {}

impl<K: TableWriter + HostLinks + HostFacts + Flows> Kernel for K {}

/// Why the engine refused or failed a request. The server maps it to the API's statuses and
/// CNI codes (`impl From<EngineError> for ApiError` in [`super::server`]).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The request names a network or endpoint netd does not hold.
    #[error("{0}")]
    NotFound(String),
    /// The core refused the request: invalid in itself, or in conflict with the state.
    #[error(transparent)]
    Refused(#[from] ResolveError),
    /// Invalid in a way only the host can tell (a netns path that is no netns).
    #[error("{0}")]
    Invalid(String),
    /// In conflict with the host or the state (a foreign link, endpoints still attached).
    #[error("{0}")]
    Conflict(String),
    #[error("{context}: {source}")]
    Kernel {
        context: String,
        #[source]
        source: KernelError,
    },
    /// A table change was refused, and so was the whole-table retry.
    #[error(
        "updating the nftables table: {refused}; re-applying the whole table failed too: {retry}"
    )]
    TableRefused {
        refused: KernelError,
        #[source]
        retry: KernelError,
    },
    #[error("{context}: {source}")]
    Store {
        context: String,
        #[source]
        source: StoreError,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

fn kernel_err(context: impl Into<String>) -> impl FnOnce(KernelError) -> EngineError {
    move |source| EngineError::Kernel {
        context: context.into(),
        source,
    }
}

fn store_err(context: impl Into<String>) -> impl FnOnce(StoreError) -> EngineError {
    move |source| EngineError::Store {
        context: context.into(),
        source,
    }
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> EngineError {
    move |source| EngineError::Io {
        context: context.into(),
        source,
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

/// An endpoint whose host veth is missing is released only once it is this old, so an ADD
/// that is still building its links is not mistaken for a dead one.
pub const ATTACH_GRACE_SECS: u64 = 60;

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
    /// With the index an attach looks things up in ([`crate::endpoints`]).
    endpoints: Endpoints,
    /// What netd's table holds now.
    applied: Desired,
    /// Per network, the addresses handed out last, so released ones are not reused at once
    /// (persisted in `meta.cursors` when an address is released, see [`Self::cursor_to_save`]).
    cursors: BTreeMap<String, Cursor>,
    started: SystemTime,
    /// The endpoints loaded from state at start (made by an earlier netd), until the attach
    /// grace has passed for all of them. Kept as keys, not judged by creation time: times
    /// are in seconds, and an endpoint made in the second the restart happened must count as
    /// made before it.
    loaded_at_start: BTreeSet<EndpointKey>,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The API's create request as the core takes it. Destructured, so a field added to the API
/// fails to compile here until the core knows it too.
fn network_request(req: CreateNetwork) -> NetworkRequest {
    let CreateNetwork {
        name,
        subnet,
        gateway,
        bridge,
        ipv6,
        subnet6,
        gateway6,
        no_ipv4,
        internal,
        icc,
        gateway_mode_ipv4,
        gateway_mode_ipv6,
        mtu,
        cni_version,
    } = req;
    NetworkRequest {
        name,
        subnet4: subnet,
        gateway4: gateway,
        bridge,
        ipv6,
        subnet6,
        gateway6,
        no_ipv4,
        internal,
        icc,
        gateway_mode4: gateway_mode_ipv4,
        gateway_mode6: gateway_mode_ipv6,
        mtu,
        cni_version,
    }
}

/// The API's attach request as the core takes it, and the network it may ensure.
fn endpoint_request(req: AttachRequest) -> (EndpointRequest, Option<NetworkRequest>) {
    let AttachRequest {
        network,
        container_id,
        ifname,
        netns,
        port_mappings,
        ips,
        mac,
        ensure_network,
    } = req;
    let req = EndpointRequest {
        network,
        container_id,
        ifname,
        netns,
        port_mappings,
        ips,
        mac,
    };
    (req, ensure_network.map(network_request))
}

impl Engine {
    /// Loads the state and applies the whole table in one batch. Endpoints whose network is
    /// gone (a crash between the two removals) are dropped.
    pub fn start(
        cfg: EngineConfig,
        mut store: Store,
        mut kernel: Box<dyn Kernel>,
    ) -> Result<Engine, EngineError> {
        let loaded = store.load().map_err(store_err("loading state"))?;
        let networks: BTreeMap<_, _> = loaded
            .networks
            .into_iter()
            .map(|n| (n.name.clone(), n))
            .collect();
        let mut endpoints = Endpoints::default();
        let mut orphans = Vec::new();
        for ep in loaded.endpoints {
            if networks.contains_key(&ep.network) {
                endpoints.insert(ep);
            } else {
                warn!(endpoint = %ep.key(), "dropping endpoint of a network that no longer exists");
                orphans.push(ep.key());
            }
        }
        let drops: Vec<Op> = orphans.iter().map(Op::DeleteEndpoint).collect();
        store
            .commit(&drops)
            .map_err(store_err("removing orphan endpoints"))?;
        let desired = plan::desired(networks.values(), endpoints.values());
        kernel
            .sync_full(&desired)
            .map_err(kernel_err(format!("applying table {}", cfg.table)))?;
        info!(
            table = %cfg.table,
            networks = networks.len(),
            endpoints = endpoints.len(),
            elements = desired.len(),
            "table applied from state"
        );
        let loaded_at_start = endpoints.keys().cloned().collect();
        let mut engine = Engine {
            loaded_at_start,
            cfg,
            store,
            kernel,
            cursors: loaded.meta.cursors.clone(),
            meta: loaded.meta,
            networks,
            endpoints,
            applied: desired,
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

    pub fn network(&self, name: &str) -> Result<Network, EngineError> {
        self.networks
            .get(name)
            .cloned()
            .ok_or_else(|| EngineError::NotFound(format!("network {name:?} does not exist")))
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
    pub fn resync(&mut self) -> Result<(), EngineError> {
        let desired = plan::desired(self.networks.values(), self.endpoints.values());
        self.kernel
            .sync_full(&desired)
            .map_err(kernel_err("re-applying the table"))?;
        self.applied = desired;
        Ok(())
    }

    /// Applies the table for the state as it is in memory now; on failure the caller undoes
    /// its in-memory change.
    fn apply_current(&mut self) -> Result<Desired, EngineError> {
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
    ) -> Result<(), EngineError> {
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
            Err(retry) => Err(EngineError::TableRefused { refused, retry }),
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
    ) -> Result<Diff, EngineError> {
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
        self.apply_back(&back);
    }

    /// Reverts the table to `self.applied` after a later step failed.
    fn revert_table(&mut self, attempted: &Desired) {
        let back = attempted.diff(&self.applied);
        self.apply_back(&back);
    }

    fn apply_back(&mut self, back: &Diff) {
        if let Err(e) = self.kernel.apply_diff(back) {
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
    /// Folds the state's journal into its per-object files (at a clean stop), so the files
    /// alone hold the state: what an older netd or a person reading them sees.
    pub fn fold_state(&mut self) -> Result<(), EngineError> {
        self.store
            .compact_now()
            .map_err(store_err("folding the journal into the state files"))
    }

    pub fn reconcile_links(&mut self) -> Result<Reconciled, EngineError> {
        let mut report = Reconciled::default();
        let links = self.kernel.links().map_err(kernel_err("listing links"))?;
        for key in self.dead_endpoints(&links) {
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

    /// Endpoints whose container netns is gone, or whose host veth is missing from `links`
    /// once their grace period is over.
    fn dead_endpoints(&mut self, links: &[HostLink]) -> Vec<EndpointKey> {
        let names: BTreeSet<&str> = links.iter().map(|l| l.name.as_str()).collect();
        let now = now();
        let started = self
            .started
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        if now.saturating_sub(started) >= ATTACH_GRACE_SECS {
            // Every endpoint loaded at start is past its attach grace by now.
            self.loaded_at_start.clear();
        }
        let loaded = &self.loaded_at_start;
        let settled = |e: &Endpoint| {
            now.saturating_sub(e.created) >= ATTACH_GRACE_SECS
                || (loaded.contains(&e.key()) && now.saturating_sub(started) >= RESTART_GRACE_SECS)
        };
        self.endpoints
            .values()
            .filter(|e| {
                !self.kernel.is_netns(&e.netns)
                    || (!names.contains(e.host_veth.as_str()) && settled(e))
            })
            .map(Endpoint::key)
            .collect()
    }

    // ---- networks ----

    pub fn create_network(&mut self, req: CreateNetwork) -> Result<Network, EngineError> {
        self.create(network_request(req))
    }

    fn create(&mut self, req: NetworkRequest) -> Result<Network, EngineError> {
        let net = self.resolve_network(req)?;
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
            .map_err(store_err("saving the network"))
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

    /// Gathers what the core needs to resolve a create request (a foreign link named like
    /// the bridge, the host's routes, the ULA prefix, IPv6 forwarding) and lets it resolve.
    fn resolve_network(&mut self, req: NetworkRequest) -> Result<Network, EngineError> {
        let bridge = resolve::bridge(&req, &self.networks)?;
        if self
            .kernel
            .link_exists(&bridge)
            .map_err(kernel_err("looking up links"))?
        {
            return Err(EngineError::Conflict(format!(
                "an interface named {bridge} already exists on the host and netd does not own it; choose another with --bridge"
            )));
        }
        let routes = if req.chooses_subnet4() || req.chooses_subnet6() {
            self.kernel
                .routes()
                .map_err(kernel_err("reading host routes"))?
        } else {
            Vec::new()
        };
        let (ula, new_id) = match self.cfg.ula_base {
            _ if !req.chooses_subnet6() => (None, None),
            Some(base) => (Some(base), None),
            None => match self.meta.ula_global_id {
                Some(id) => (Some(ipam::ula_prefix(id)), None),
                None => {
                    let id = random_ula_global_id()?;
                    (Some(ipam::ula_prefix(id)), Some(id))
                }
            },
        };
        let ipv6_forwarding = match req.wants_ipv6() {
            true => self.kernel.ipv6_forwarding().map_err(|e| e.to_string()),
            false => Ok(()),
        };
        let defaults = resolve::Defaults {
            pool4: self.cfg.pool4,
            pool4_prefix: self.cfg.pool4_prefix,
            cni_version: self.cfg.cni_version.clone(),
        };
        let facts = resolve::NetworkFacts {
            routes,
            ula,
            ipv6_forwarding,
            now: now(),
        };
        let net = resolve::network(req, bridge, &self.networks, &defaults, &facts)?;
        // Persisted only for a network that uses it, so automatic IPv6 subnets stay the same
        // across restarts and a refused request leaves nothing behind.
        if let Some(id) = new_id {
            let meta = Meta {
                ula_global_id: Some(id),
                ..self.meta.clone()
            };
            self.store
                .put_meta(&meta)
                .map_err(store_err("saving the ULA prefix"))?;
            self.meta = meta;
        }
        Ok(net)
    }

    pub fn remove_network(&mut self, name: &str) -> Result<(), EngineError> {
        let net = self.network(name)?;
        let attached: Vec<&Endpoint> = self
            .endpoints
            .values()
            .filter(|e| e.network == name)
            .collect();
        if !attached.is_empty() {
            return Err(EngineError::Conflict(format!(
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
        // The network's allocation cursor goes in the same record.
        let meta = self.meta.cursors.contains_key(name).then(|| {
            let mut meta = self.meta.clone();
            meta.cursors.remove(name);
            meta
        });
        let mut ops = vec![Op::DeleteNetwork(name)];
        ops.extend(meta.as_ref().map(Op::PutMeta));
        if let Err(e) = self.store.commit(&ops) {
            self.revert_table(&desired);
            self.networks.insert(name.to_string(), net);
            return Err(store_err("removing the network from state")(e));
        }
        if let Some(meta) = meta {
            self.meta = meta;
        }
        self.applied = desired;
        self.forget_network(&net);
        info!(network = %name, "network removed");
        Ok(())
    }

    /// After a network left the state (with its saved cursor) and the table: its
    /// in-memory cursor, conflist and bridge go. Failures are logged; the removal itself
    /// has succeeded.
    fn forget_network(&mut self, net: &Network) {
        let name = net.name.as_str();
        self.cursors.remove(name);
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
    }

    fn write_conflist(&self, net: &Network) -> Result<(), EngineError> {
        let dir = &self.cfg.cni_conf_dir;
        std::fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
        let text = conflist::render(net, &self.cfg.socket.to_string_lossy());
        store::write_atomic(&dir.join(conflist::file_name(&net.name)), text.as_bytes())
            .map_err(store_err("writing the conflist"))
    }

    /// Rewrites conflists that are missing or stale (another socket path), and removes netd's
    /// conflists for networks that no longer exist. Other files are never touched.
    fn sync_conflists(&mut self) -> Result<(), EngineError> {
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
    pub fn attach(&mut self, req: AttachRequest) -> Result<Attachment, EngineError> {
        let (req, ensure) = endpoint_request(req);
        let Some(spec) = ensure else {
            return self.attach_existing(req);
        };
        resolve::check_ensure(&spec, &req.network, self.networks.get(&req.network))?;
        if self.networks.contains_key(&req.network) {
            return self.attach_existing(req);
        }
        let net = self.create(spec)?;
        info!(network = %net.name, "network created on first attach");
        self.attach_existing(req).inspect_err(|_| {
            if let Err(e) = self.remove_network(&net.name) {
                warn!(network = %net.name, error = %e, "could not remove the network made for a failed attach");
            }
        })
    }

    fn attach_existing(&mut self, req: EndpointRequest) -> Result<Attachment, EngineError> {
        resolve::check_endpoint_request(&req)?;
        let net = self.networks.get(&req.network).cloned().ok_or_else(|| {
            EngineError::NotFound(format!(
                "network {:?} is not known to netd (netctl network ls lists the networks)",
                req.network
            ))
        })?;
        if !self.kernel.is_netns(&req.netns) {
            return Err(EngineError::Invalid(format!(
                "netns {:?} is not a network namespace",
                req.netns
            )));
        }
        let cursor = self.cursors.get(&net.name).copied().unwrap_or_default();
        let state = resolve::State {
            networks: &self.networks,
            endpoints: &self.endpoints,
        };
        let resolved = resolve::endpoint(req, &net, state, cursor, now())?;
        let ep = resolved.endpoint;
        // A DEL of the same container interface may still be removing its veth, and the
        // flows of a released container that had these addresses may still be being cleared.
        self.kernel.settle_link(&ep.host_veth);
        // The network's bridge holds a port for each of its endpoints and for each DEL's
        // veth the reaper has not removed yet, and the kernel refuses a port past its limit
        // (EXFULL) even when the endpoints alone leave room, which churn faster than the
        // kernel unregisters veths brings about. So make room first: this attach's port
        // must fit beside the endpoints and the removals still pending.
        let attached = self.endpoints.count_in(&net.name);
        self.kernel.settle_links_of(
            &net.name,
            resolve::MAX_BRIDGE_PORTS.saturating_sub(attached + 1),
        );
        self.kernel.settle_conntrack(&endpoint_addrs(&ep));
        let diff = self.apply_endpoint(&net, &ep, true)?;
        if let Err(e) = self.store.put_endpoint(&ep) {
            self.undo_diff(&diff);
            return Err(store_err("saving the endpoint")(e));
        }
        self.commit_diff(&diff);
        self.endpoints.insert(ep.clone());
        self.clear_stale_udp_flows(&net, &ep);
        if resolved.cursor != cursor {
            self.cursors.insert(net.name.clone(), resolved.cursor);
        }
        info!(endpoint = %ep.key(), addr4 = ?ep.addr4, addr6 = ?ep.addr6, ports = ep.ports.len(), "endpoint attached");
        Ok(Attachment {
            network: net,
            endpoint: ep,
        })
    }

    pub fn endpoint(&self, key: &EndpointKey) -> Result<Attachment, EngineError> {
        let ep = self
            .endpoints
            .get(key)
            .ok_or_else(|| EngineError::NotFound(format!("netd holds no endpoint {key}")))?;
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
            // Host bindings exist only in nat families (`ports::bindings`).
            .flat_map(|pm| ports::bindings(net, pm))
            .collect();
        if udp.is_empty() {
            return;
        }
        let cleared = self.kernel.clear_udp_conntrack(&udp);
        log_cleared(ep, "stale UDP conntrack entries", cleared);
    }

    /// CNI DEL with netd's help: releases the endpoint (if netd holds it) and removes its host
    /// veth, and with it the container's end, after the answer. Returns whether an endpoint
    /// was released.
    pub fn release(&mut self, key: &EndpointKey) -> Result<bool, EngineError> {
        // Read before the endpoint goes: a pair the plugin made for this endpoint but never
        // marked (it died after netd answered the attach) is unmarked, with its peer there.
        let netns = self.endpoints.get(key).map(|ep| ep.netns.clone());
        let released = self.detach(key)?;
        // The veth's name does not say its network; the mark does, so a DEL for another
        // network of the same container interface cannot take this one's veth.
        self.kernel.remove_link_later(
            &model::host_veth_name(&key.container_id, &key.ifname),
            &key.network,
            netns.as_deref(),
        );
        Ok(released)
    }

    /// Releases an endpoint with its addresses and ports. Returns false if there was none.
    pub fn detach(&mut self, key: &EndpointKey) -> Result<bool, EngineError> {
        let Some(ep) = self.endpoints.get(key).cloned() else {
            return Ok(false);
        };
        let net = self.network(&ep.network)?;
        let diff = self.apply_endpoint(&net, &ep, false)?;
        // The cursor is saved with the endpoint's removal, ahead of it in one journal
        // record: a restart sees both or neither, so it may keep the endpoint but never
        // sees a released address behind a stale cursor. One record is one flush.
        let meta = self.cursor_to_save(&net.name);
        let mut ops: Vec<Op> = meta.as_ref().map(Op::PutMeta).into_iter().collect();
        ops.push(Op::DeleteEndpoint(key));
        if let Err(e) = self.store.commit(&ops) {
            self.undo_diff(&diff);
            return Err(store_err("removing the endpoint from state")(e));
        }
        if let Some(meta) = meta {
            self.meta = meta;
        }
        self.commit_diff(&diff);
        self.endpoints.remove(key);
        info!(endpoint = %key, "endpoint detached");
        self.clear_flows_of(&ep);
        Ok(true)
    }

    /// The meta to persist with a release if the network's allocation cursor moved since
    /// it was last saved. Saving it when an address is released is enough: every address
    /// handed out after the saved cursor and before the next release is still in use at
    /// that release, so next-fit from the saved cursor skips them and lands where the
    /// in-memory one would. ADD stays one record.
    fn cursor_to_save(&self, network: &str) -> Option<Meta> {
        let cursor = self.cursors.get(network).copied().unwrap_or_default();
        if cursor == Cursor::default() || self.meta.cursors.get(network) == Some(&cursor) {
            return None;
        }
        let mut meta = self.meta.clone();
        meta.cursors.insert(network.to_string(), cursor);
        Some(meta)
    }

    /// After `ep` was released (its table elements are gone): has the conntrack entries of
    /// its addresses deleted, so a client's flow DNATed to it, or any flow from or to it, does
    /// not live on (UDP without end while the client keeps sending) and reach the next
    /// container that gets the address. Done after the answer; an attach settles it first.
    fn clear_flows_of(&mut self, ep: &Endpoint) {
        self.kernel.clear_conntrack_later(&endpoint_addrs(ep));
    }

    /// CNI GC: releases the network's endpoints the runtime no longer lists.
    pub fn gc(&mut self, req: GcRequest) -> Result<Vec<Endpoint>, EngineError> {
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

/// The endpoint's addresses, both families.
fn endpoint_addrs(ep: &Endpoint) -> Vec<IpAddr> {
    ep.addr4
        .map(IpAddr::V4)
        .into_iter()
        .chain(ep.addr6.map(IpAddr::V6))
        .collect()
}

/// Conntrack clearing is best effort (the change it follows has succeeded): log either way.
fn log_cleared(ep: &Endpoint, what: &str, r: Result<usize, KernelError>) {
    match r {
        Ok(n) => info!(endpoint = %ep.key(), deleted = n, "cleared {what}"),
        Err(e) => warn!(endpoint = %ep.key(), error = %e, "could not clear {what}"),
    }
}

/// A random RFC 4193 global ID (40 bits) from the kernel's random source.
fn random_ula_global_id() -> Result<u64, EngineError> {
    let mut buf = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut buf))
        .map_err(io_err("reading /dev/urandom"))?;
    Ok(u64::from_le_bytes(buf) & 0xff_ffff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ApiError, GcAttachment};
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
        /// Addresses an attach waited for (settle_conntrack) before handing them out.
        settled: Vec<IpAddr>,
        /// The host does not forward IPv6.
        no_ipv6_forwarding: bool,
        /// Each settle_links_of: the network and how many pending removals may remain.
        room: Vec<(String, usize)>,
    }

    struct FakeKernel(Arc<Mutex<FakeTable>>);

    impl TableWriter for FakeKernel {
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
    }

    impl HostFacts for FakeKernel {
        fn routes(&mut self) -> Result<Vec<IpNet>, KernelError> {
            Ok(vec![
                "10.99.0.0/24".parse().unwrap(),
                "fd00:99::/64".parse().unwrap(),
            ])
        }
        fn ipv6_forwarding(&mut self) -> Result<(), ForwardingError> {
            match self.0.lock().unwrap().no_ipv6_forwarding {
                false => Ok(()),
                true => Err(ForwardingError::Disabled {
                    sysctl: "net.ipv6.conf.all.forwarding",
                    value: "0".into(),
                }),
            }
        }
    }

    impl HostLinks for FakeKernel {
        fn link_exists(&mut self, name: &str) -> Result<bool, KernelError> {
            Ok(name == "eth0" || self.0.lock().unwrap().links.iter().any(|l| l.name == name))
        }
        fn links(&mut self) -> Result<Vec<HostLink>, KernelError> {
            Ok(self.0.lock().unwrap().links.clone())
        }
        fn remove_link_later(&mut self, name: &str, _network: &str, _netns: Option<&str>) {
            self.0.lock().unwrap().links.retain(|l| l.name != name);
        }
        fn settle_link(&mut self, _name: &str) {}
        fn settle_links_of(&mut self, network: &str, keep: usize) {
            self.0
                .lock()
                .unwrap()
                .room
                .push((network.to_string(), keep));
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
    }

    impl Flows for FakeKernel {
        fn clear_udp_conntrack(
            &mut self,
            bindings: &[ports::Binding],
        ) -> Result<usize, KernelError> {
            Ok(bindings.len())
        }
        fn clear_conntrack_later(&mut self, addrs: &[IpAddr]) {
            self.0.lock().unwrap().cleared.extend_from_slice(addrs);
        }
        fn settle_conntrack(&mut self, addrs: &[IpAddr]) {
            self.0.lock().unwrap().settled.extend_from_slice(addrs);
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
            .map_err(ApiError::from)
            .unwrap_err();
        assert_eq!(err.kind, crate::api::ErrorKind::Conflict);
        assert!(err.message.contains("network b"), "{}", err.message);
        let err = e
            .create_network(create("a"))
            .map_err(ApiError::from)
            .unwrap_err();
        assert_eq!(err.kind, crate::api::ErrorKind::Conflict);
        let err = e
            .create_network(CreateNetwork {
                bridge: Some("eth0".into()),
                ..create("d")
            })
            .map_err(ApiError::from)
            .unwrap_err();
        assert!(
            err.message.contains("eth0 already exists"),
            "{}",
            err.message
        );
        let err = e
            .create_network(CreateNetwork {
                internal: true,
                gateway_mode_ipv4: Some(model::GatewayMode::Routed),
                ..create("e")
            })
            .map_err(ApiError::from)
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
            .map_err(ApiError::from)
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

    /// Each attach leaves its own port free on the network's bridge: the network's pending
    /// veth removals may number at most what its endpoints leave of the 1,023 ports, minus one
    /// (counted per network, after a restart too).
    #[test]
    fn an_attach_makes_room_on_its_bridge_beside_the_networks_endpoints() {
        let fx = Fixture::new("room");
        let mut e = fx.engine();
        e.create_network(create("a")).unwrap();
        e.create_network(create("b")).unwrap();
        e.attach(attach("a", "c1", vec![])).unwrap();
        e.attach(attach("b", "c2", vec![])).unwrap();
        e.attach(attach("a", "c3", vec![])).unwrap();
        e.release(&EndpointKey {
            network: "a".into(),
            container_id: "c1".into(),
            ifname: "eth0".into(),
        })
        .unwrap();
        drop(e);
        let mut e = fx.engine();
        e.attach(attach("a", "c4", vec![])).unwrap();
        let max = resolve::MAX_BRIDGE_PORTS;
        assert_eq!(
            fx.table.lock().unwrap().room,
            vec![
                ("a".to_string(), max - 1),
                ("b".to_string(), max - 1),
                ("a".to_string(), max - 2),
                ("a".to_string(), max - 2),
            ]
        );
    }

    #[test]
    fn endpoints_allocate_unique_addresses_and_ports_conflict() {
        let fx = Fixture::new("eps");
        let mut e = fx.engine();
        e.create_network(create("a")).unwrap();
        let one = e.attach(attach("a", "c1", vec![tcp(8080)])).unwrap();
        let two = e.attach(attach("a", "c2", vec![])).unwrap();
        assert_ne!(one.endpoint.addr4, two.endpoint.addr4);
        let err = e
            .attach(attach("a", "c3", vec![tcp(8080)]))
            .map_err(ApiError::from)
            .unwrap_err();
        assert_eq!(err.kind, crate::api::ErrorKind::Conflict);
        assert!(err.message.contains("container c1"), "{}", err.message);
        let err = e
            .attach(attach("a", "c1", vec![]))
            .map_err(ApiError::from)
            .unwrap_err();
        assert_eq!(err.kind, crate::api::ErrorKind::Conflict);
        // Mappings that can never work are invalid, not conflicts.
        let v6 = PortMapping {
            host_ip: Some("2001:db8::1".parse().unwrap()),
            ..tcp(8081)
        };
        for bad in [vec![tcp(0)], vec![v6], vec![tcp(8082), tcp(8082)]] {
            let err = e
                .attach(attach("a", "c4", bad.clone()))
                .map_err(ApiError::from)
                .unwrap_err();
            assert_eq!(err.kind, crate::api::ErrorKind::Invalid, "{bad:?}: {err}");
        }
        e.create_network(CreateNetwork {
            internal: true,
            ..create("inner")
        })
        .unwrap();
        let err = e
            .attach(attach("inner", "c4", vec![tcp(8083)]))
            .map_err(ApiError::from)
            .unwrap_err();
        assert_eq!(err.kind, crate::api::ErrorKind::Invalid, "{err}");
        let err = e
            .attach(attach("nope", "c9", vec![]))
            .map_err(ApiError::from)
            .unwrap_err();
        assert_eq!(err.kind, crate::api::ErrorKind::NotFound);
        let err = e
            .attach(attach("a", "bad/id", vec![]))
            .map_err(ApiError::from)
            .unwrap_err();
        assert_eq!(err.kind, crate::api::ErrorKind::Invalid);

        let err = e.remove_network("a").map_err(ApiError::from).unwrap_err();
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
        // Every refusal is the core's (crates/core/src/resolve.rs tests them all); here: one
        // of each kind reaches the API with its status and leaves table and state alone.
        let refused = [
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
        ];
        for (ips, kind, text) in refused {
            let err = e
                .attach(fixed("c9", &ips))
                .map_err(ApiError::from)
                .unwrap_err();
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
        let err = e
            .attach(fixed("c9", &["10.50.0.200"]))
            .map_err(ApiError::from)
            .unwrap_err();
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
        let err = e
            .attach(attach("pods", "c0", vec![]))
            .map_err(ApiError::from)
            .unwrap_err();
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
        let err = e
            .attach(ensure("c3", "10.244.2.0/24", vec![]))
            .map_err(ApiError::from)
            .unwrap_err();
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
            .map_err(ApiError::from)
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
            .map_err(ApiError::from)
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
        let state = fx.dir.join("state");
        let records = || store::journal_records(&state);
        // An ADD is one record of one op.
        assert_eq!(records().last().unwrap(), &["put_endpoint"]);
        let before = records().len();
        assert!(e.release(&one.key()).unwrap());
        // A DEL is one record (one flush): the moved cursor, then the removal.
        assert_eq!(records().len(), before + 1);
        assert_eq!(records().last().unwrap(), &["put_meta", "delete_endpoint"]);
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
        // Before handing an address out, the attach waited for any pending flow clearing.
        assert!(fx
            .table
            .lock()
            .unwrap()
            .settled
            .contains(&IpAddr::V4(two.addr4.unwrap())));
        assert_eq!(
            u32::from(two.addr4.unwrap()),
            u32::from(one.addr4.unwrap()) + 1
        );
        // Removing the network forgets its cursor.
        e.release(&two.key()).unwrap();
        e.remove_network("a").unwrap();
        assert_eq!(records().last().unwrap(), &["delete_network", "put_meta"]);
        drop(e);
        let e = fx.engine();
        assert!(e.meta.cursors.is_empty());
    }

    /// IPv6 facts come from the host: without IPv6 forwarding the request is refused and
    /// leaves nothing behind (not even the ULA ID); with it, the ID is drawn once and kept.
    #[test]
    fn ipv6_needs_forwarding_and_keeps_its_ula_prefix() {
        use crate::api::ErrorKind;
        let fx = Fixture::new("ula");
        let mut e = fx.engine();
        let six = |name: &str| CreateNetwork {
            ipv6: true,
            ..create(name)
        };
        fx.table.lock().unwrap().no_ipv6_forwarding = true;
        let err = e
            .create_network(six("a"))
            .map_err(ApiError::from)
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Invalid);
        assert!(
            err.message.contains("net.ipv6.conf.all.forwarding is 0"),
            "{}",
            err.message
        );
        assert!(e.network("a").is_err());
        assert_eq!(e.meta.ula_global_id, None);
        assert!(!fx.dir.join("cni/netd-a.conflist").exists());

        fx.table.lock().unwrap().no_ipv6_forwarding = false;
        let a = e.create_network(six("a")).unwrap();
        let id = e
            .meta
            .ula_global_id
            .expect("drawn for the first automatic IPv6 subnet");
        let ula = ipam::ula_prefix(id);
        assert!(ula.contains(&a.subnet6.unwrap()), "{a:?} outside {ula}");
        drop(e);
        let mut e = fx.engine();
        let b = e.create_network(six("b")).unwrap();
        assert_eq!(e.meta.ula_global_id, Some(id));
        assert!(ula.contains(&b.subnet6.unwrap()));
        assert_ne!(a.subnet6, b.subnet6);
    }

    #[test]
    fn a_kernel_failure_changes_nothing() {
        let fx = Fixture::new("fail");
        let mut e = fx.engine();
        e.create_network(create("a")).unwrap();
        let before = fx.table();
        // The diff and the whole-table retry are both refused.
        fx.table.lock().unwrap().fail_next = 2;
        let err = e
            .attach(attach("a", "c1", vec![tcp(80)]))
            .map_err(ApiError::from)
            .unwrap_err();
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
            e.remove_network("a")
                .map_err(ApiError::from)
                .unwrap_err()
                .kind,
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
        for i in 0..resolve::MAX_BRIDGE_PORTS {
            e.attach(attach("big", &format!("c{i}"), vec![])).unwrap();
        }
        let err = e
            .attach(attach("big", "one-too-many", vec![]))
            .map_err(ApiError::from)
            .unwrap_err();
        assert_eq!(err.kind, crate::api::ErrorKind::Conflict);
        assert!(err.message.contains("1023 ports"), "{}", err.message);
    }
}
