//! The six CNI commands. netd owns addresses and firewall state; the plugin only builds and
//! removes links, so every command is "ask netd, then make the kernel match".

use std::path::Path;

use netd_api::{
    AttachRequest, Attachment, Client, ClientError, ErrorKind, GcAttachment, GcRequest, GcResult,
    Released, Status,
};

use crate::env::{Command, Env};
use crate::error::PluginError;
use crate::links::{Links, Removal};
use crate::shaping::{self, AddOutcome};
use crate::types::{self, CniVersion, NetConf, VersionReply};

/// The netd calls the plugin makes; a trait so the commands can be tested without a daemon.
pub trait Netd {
    fn socket(&self) -> &Path;
    /// Asks netd for the endpoint; `meanwhile` runs while netd works on it.
    fn attach(
        &self,
        req: &AttachRequest,
        meanwhile: &mut dyn FnMut(),
    ) -> Result<Attachment, ClientError>;
    fn endpoint(&self, network: &str, cid: &str, ifname: &str) -> Result<Attachment, ClientError>;
    fn detach(&self, network: &str, cid: &str, ifname: &str) -> Result<Released, ClientError>;
    /// DEL: detach, and netd removes the host veth (and the container's end) after answering.
    fn release(&self, network: &str, cid: &str, ifname: &str) -> Result<Released, ClientError>;
    fn gc(&self, req: &GcRequest) -> Result<GcResult, ClientError>;
    fn status(&self) -> Result<Status, ClientError>;
}

impl Netd for Client {
    fn socket(&self) -> &Path {
        self.socket_path()
    }
    /// The answer's endpoint comes without its port mappings: the plugin sent them and never
    /// reads them back, and at 10,000 mappings the echo doubled the JSON on the socket.
    fn attach(
        &self,
        req: &AttachRequest,
        meanwhile: &mut dyn FnMut(),
    ) -> Result<Attachment, ClientError> {
        Client::attach_omitting_ports(self, req, meanwhile)
    }
    fn endpoint(&self, network: &str, cid: &str, ifname: &str) -> Result<Attachment, ClientError> {
        Client::endpoint(self, network, cid, ifname)
    }
    fn detach(&self, network: &str, cid: &str, ifname: &str) -> Result<Released, ClientError> {
        Client::detach(self, network, cid, ifname)
    }
    fn release(&self, network: &str, cid: &str, ifname: &str) -> Result<Released, ClientError> {
        Client::release(self, network, cid, ifname)
    }
    fn gc(&self, req: &GcRequest) -> Result<GcResult, ClientError> {
        Client::gc(self, req)
    }
    fn status(&self) -> Result<Status, ClientError> {
        Client::status(self)
    }
}

/// Runs one command; `Some(json)` is what goes to stdout.
pub fn run(
    env: &Env,
    input: &[u8],
    connect: &dyn Fn(&Path) -> Box<dyn Netd>,
    links: &dyn Links,
) -> Result<Option<String>, PluginError> {
    if env.command == Command::Version {
        return Ok(Some(version(input)));
    }
    let conf = NetConf::parse(input)?;
    for key in &conf.ignored_runtime_config {
        eprintln!("netd-cni: ignoring runtimeConfig.{key}: not a capability netd-cni implements");
    }
    let netd = connect(&conf.socket);
    let netd = netd.as_ref();
    let json = |r: &types::CniResult| serde_json::to_string(r).expect("results serialise");
    match env.command {
        Command::Version => unreachable!("handled above"),
        Command::Add => add(env, &conf, netd, links).map(|r| Some(json(&r))),
        Command::Del => del(env, &conf, netd, links).map(|()| None),
        Command::Check => check(env, &conf, netd, links).map(|()| None),
        Command::Gc => gc(&conf, netd, links).map(|()| None),
        Command::Status => status(&conf, netd).map(|()| None),
    }
}

/// Echoes the requested version when we speak it (the spec's rule), else our newest; never
/// fails on missing or odd stdin, because runtimes probe with nothing but CNI_COMMAND.
fn version(input: &[u8]) -> String {
    let requested = types::requested_version(input)
        .and_then(|v| CniVersion::parse(&v))
        .unwrap_or(CniVersion::LATEST);
    let reply = VersionReply {
        cni_version: requested.as_str().to_string(),
        supported_versions: CniVersion::supported_list()
            .into_iter()
            .map(String::from)
            .collect(),
    };
    serde_json::to_string(&reply).expect("serialisable")
}

/// Checks that CNI_NETNS names a network namespace: a missing path means the container is
/// gone (code 3: nothing to clean up), anything else is a bad variable (code 4).
fn container_netns<'a>(env: &'a Env, links: &dyn Links) -> Result<&'a Path, PluginError> {
    let netns = env.require_netns()?;
    // netd records the path as a string; a lossy copy would name some other file.
    if netns.to_str().is_none() {
        return Err(PluginError::env(
            "CNI_NETNS",
            format!("{netns:?} is not UTF-8"),
        ));
    }
    if links.is_netns(netns) {
        return Ok(netns);
    }
    if !netns.exists() {
        return Err(PluginError::UnknownContainer {
            msg: format!(
                "the container's network namespace {} does not exist",
                netns.display()
            ),
        });
    }
    Err(PluginError::env(
        "CNI_NETNS",
        format!("{} is not a network namespace", netns.display()),
    ))
}

/// The container end starts life in the host namespace under this name, before it moves and is
/// renamed; derived from the host name so that concurrent ADDs never pick the same one.
pub fn temp_peer_name(host_veth: &str) -> String {
    format!(
        "vt{:013x}",
        netd_core::model::fnv1a(&[host_veth.as_bytes()]) >> 12
    )
}

fn add(
    env: &Env,
    conf: &NetConf,
    netd: &dyn Netd,
    links: &dyn Links,
) -> Result<types::CniResult, PluginError> {
    let cid = env.container_id()?;
    let ifname = env.ifname()?;
    let args = env.args()?;
    let netns = container_netns(env, links)?;
    let (ips, mac) = fixed_addressing(conf, &args)?;
    refuse_taken_ifname(conf, netns, ifname)?;

    // A second ADD of an attached interface fails at netd (it holds the endpoint) before any
    // rollback could tear the working attachment down. A host link left over without an
    // endpoint shows when creating the pair fails with EEXIST once netd has answered, because
    // netd first finishes removing the veth of a DEL it has just answered (the runtime may ADD
    // the same interface again at once); this container's own unfinished pair is replaced
    // then ([`create_over_leftover`]), anything else refused. Not looked up beforehand: on a
    // host with many containers every lookup of a veth costs the kernel a walk over all
    // their namespaces.
    let already = |name: &str| PluginError::Conflict {
        msg: format!(
            "container {cid} interface {ifname} is already attached \
             (host link {name} exists); DEL it first"
        ),
        details: String::new(),
    };
    let req = AttachRequest {
        network: conf.network.clone(),
        container_id: cid.to_string(),
        ifname: ifname.to_string(),
        netns: netns.display().to_string(),
        port_mappings: conf.port_mappings.clone(),
        ips,
        mac,
        ensure_network: conf
            .ensure
            .as_ref()
            .map(|e| e.request(&conf.network, conf.version)),
    };
    // The pair is made while netd works on the attach: it is the largest piece of kernel work
    // of an ADD and needs nothing from netd's answer (the name follows from the container and
    // the interface). It stays down, unmarked and outside any bridge until the answer, so
    // netd's reconciliation, which deletes only marked links, leaves it alone (the reaper of
    // a DEL answered just before may not: see the attach below). If it fails here (EEXIST
    // from a veth netd is still removing, say) it is made again below.
    let veth = netd_core::model::host_veth_name(cid, ifname);
    let tmp = temp_peer_name(&veth);
    let mut early = None;
    let att = netd.attach(&req, &mut || {
        early = Some(links.create_veth(&veth, &tmp, netns));
    });
    let made_early = matches!(early, Some(Ok(_)));
    let att = att.map_err(|e| {
        let e = match e {
            ClientError::Api(api) if api.kind == ErrorKind::NotFound => {
                PluginError::InvalidConfig {
                    msg: format!(
                        "network {} is not known to netd: create it (netctl network create {}) or give the configuration \"subnets\" so netd creates it",
                        conf.network, conf.network
                    ),
                    details: api.message,
                }
            }
            e => PluginError::from_netd("attach", e),
        };
        match made_early.then(|| links.delete_link(&veth)) {
            Some(Err(le)) => e.with_note(&format!("rollback could not delete {veth}: {le}")),
            _ => e,
        }
    })?;

    // From here on netd holds the endpoint: every failure undoes what was done.
    let fail = |e: PluginError, veth_made: bool| -> PluginError {
        let mut notes = Vec::new();
        if veth_made {
            match links.delete_link(&veth) {
                Ok(_) => {}
                Err(le) => notes.push(format!("rollback could not delete {veth}: {le}")),
            }
        }
        if let Err(de) = netd.detach(&conf.network, cid, ifname) {
            notes.push(format!("rollback could not detach from netd: {de}"));
        }
        e.with_note(&notes.join("; "))
    };
    if att.endpoint.host_veth != veth {
        return Err(fail(
            PluginError::NetdInternal {
                msg: "ADD failed: netd named the host veth differently".into(),
                details: format!("netd: {}, plugin: {veth}", att.endpoint.host_veth),
            },
            made_early,
        ));
    }

    let addressing = shaping::addressing(&att).map_err(|d| {
        fail(
            PluginError::NetdInternal {
                msg: "ADD failed: netd's attachment is inconsistent".into(),
                details: d,
            },
            made_early,
        )
    })?;
    let addrs: Vec<_> = addressing.iter().map(|a| a.addr).collect();
    let routes = shaping::routes(att.network.internal, &addressing);
    let net = &att.network;
    let step = |what: String, e: crate::links::LinkError| {
        PluginError::link(format!("ADD failed at {what}"), e.to_string())
    };

    let mut host_mac = match early {
        Some(Ok(mac)) => mac,
        _ => create_over_leftover(links, &veth, &tmp, netns).map_err(|e| {
            // EEXIST made nothing (the name, or the peer's temporary name inside the
            // container, is taken): whatever has that name is not ours to remove.
            if e.errno() == Some(libc::EEXIST) {
                if links.link_exists(&veth).unwrap_or(false) {
                    return fail(already(&veth), false);
                }
                return fail(step(format!("create_veth {veth}"), e), false);
            }
            // create_veth removes what it made when it fails; deleting again covers a crash of
            // that cleanup's request.
            fail(step(format!("create_veth {veth}"), e), true)
        })?,
    };
    let bridge_index = links
        .ensure_bridge(&net.bridge, &net.gateway_nets(), net.mtu, &net.name)
        .map_err(|e| fail(step(format!("ensure_bridge {}", net.bridge), e), true))?;
    let attach = || links.attach_veth(&veth, bridge_index, net.mtu, !net.icc, &net.name);
    let attached = match attach() {
        // The pair made while netd worked is gone: netd's reaper took it for the unmarked
        // pair of a DEL of this interface that netd answered just before this ADD (see
        // netd/src/daemon/reaper.rs). netd settles that removal before answering, so a pair
        // made now stays.
        Err(e) if made_early && e.errno() == Some(libc::ENODEV) => {
            host_mac = links
                .create_veth(&veth, &tmp, netns)
                .map_err(|e| fail(step(format!("create_veth {veth}"), e), true))?;
            attach()
        }
        r => r,
    };
    attached.map_err(|e| {
        fail(
            step(format!("attach_veth {veth} to {}", net.bridge), e),
            true,
        )
    })?;
    let container = links
        .configure_container(
            netns,
            &tmp,
            ifname,
            &addrs,
            &routes,
            net.mtu,
            att.endpoint.mac.map(|m| m.0),
        )
        .map_err(|e| {
            fail(
                step(
                    format!("configure_container {ifname} in {}", netns.display()),
                    e,
                ),
                true,
            )
        })?;

    let out = AddOutcome {
        attachment: &att,
        host_mac: Some(host_mac),
        container: &container,
        netns,
        addressing: &addressing,
        routes: &routes,
    };
    Ok(shaping::add_result(
        conf.version,
        conf.prev_result.clone(),
        conf.dns.as_ref(),
        &out,
    ))
}

/// Creates the pair after netd's answer. On EEXIST, a host veth of this name that is
/// unmarked with its peer in this container's namespace is the pair of an earlier ADD of
/// this interface whose plugin died before marking it (netd holds no endpoint for the
/// interface, or it would have refused the attach; the runtime runs one command per
/// container at a time): it is removed and the pair made again. Anything else keeps the
/// EEXIST. Only on this failure path, so a successful ADD makes no extra request.
fn create_over_leftover(
    links: &dyn Links,
    veth: &str,
    tmp: &str,
    netns: &Path,
) -> Result<String, crate::links::LinkError> {
    match links.create_veth(veth, tmp, netns) {
        Err(e) if e.errno() == Some(libc::EEXIST) => {
            match links.delete_host_veth(veth, None, Some(netns)) {
                Ok(Removal::Deleted) => {
                    eprintln!("netd-cni: removed {veth}, left unmarked in this container by an ADD that did not finish");
                    links.create_veth(veth, tmp, netns)
                }
                _ => Err(e),
            }
        }
        r => r,
    }
}

/// The fixed addresses and MAC of an ADD: from the `ips`/`mac` capabilities or CNI_ARGS
/// `IP=`/`MAC=`. Both may be sent (a runtime that knows both conventions); when they disagree
/// there is no telling which the operator meant, so the ADD is refused.
fn fixed_addressing(
    conf: &NetConf,
    args: &crate::env::CniArgs,
) -> Result<
    (
        Vec<netd_core::model::RequestedAddr>,
        Option<netd_core::model::MacAddr>,
    ),
    PluginError,
> {
    let ips = match (conf.ips.is_empty(), args.ips.is_empty()) {
        (_, true) => conf.ips.clone(),
        (true, false) => args.ips.clone(),
        (false, false) if conf.ips == args.ips => conf.ips.clone(),
        (false, false) => {
            let list = |v: &[netd_core::model::RequestedAddr]| {
                v.iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            };
            return Err(PluginError::invalid_config(format!(
                "runtimeConfig.ips ({}) and CNI_ARGS IP ({}) ask for different addresses",
                list(&conf.ips),
                list(&args.ips)
            )));
        }
    };
    let mac = match (conf.mac, args.mac) {
        (Some(a), Some(b)) if a != b => {
            return Err(PluginError::invalid_config(format!(
                "runtimeConfig.mac ({a}) and CNI_ARGS MAC ({b}) ask for different MACs"
            )))
        }
        (a, b) => a.or(b),
    };
    Ok((ips, mac))
}

/// In a chain where another plugin ran first, prevResult lists what it made. If it already put
/// an interface named CNI_IFNAME into this container, netd-cni cannot add its own under that
/// name: refuse before netd holds anything, rather than fail half-way at the rename.
fn refuse_taken_ifname(conf: &NetConf, netns: &Path, ifname: &str) -> Result<(), PluginError> {
    let Some(prev) = &conf.prev_result else {
        return Ok(());
    };
    let sandbox = netns.display().to_string();
    if prev
        .interfaces
        .iter()
        .any(|i| i.name == ifname && i.sandbox.as_deref() == Some(sandbox.as_str()))
    {
        return Err(PluginError::invalid_config(format!(
            "an earlier plugin in the chain already made interface {ifname} in {sandbox} (prevResult); \
             netd-cni needs its own interface: put it first in the conflist or give it another CNI_IFNAME"
        )));
    }
    Ok(())
}

/// Best effort and idempotent: whatever is already gone counts as removed. When netd answers
/// that it released the endpoint, it removes the veth pair itself after answering (the kernel
/// takes 15–30 ms to unregister a veth, most of a DEL otherwise). An unreachable netd does not
/// block the container's removal: the plugin removes the links itself and netd releases the
/// endpoint when it is back.
///
/// The plugin removes only a host veth that is netd's for this DEL
/// ([`Links::delete_host_veth`]): marked for this network, or unmarked with its peer in this
/// container's namespace, the pair an ADD made while netd worked and never marked because its
/// plugin died. When netd released an endpoint, its reaper removes both kinds (it knows the
/// endpoint's netns); when it held none, it knows no netns and removes marked veths only, so
/// the plugin looks for the unmarked pair itself.
fn del(env: &Env, conf: &NetConf, netd: &dyn Netd, links: &dyn Links) -> Result<(), PluginError> {
    let cid = env.container_id()?;
    let ifname = env.ifname()?;
    let mut failure: Option<PluginError> = None;
    // Whether to remove the container's interface too: only when netd could not be asked.
    // When netd answered, anything of this interface's that it marked is its reaper's.
    let mut container_side = true;
    match netd.release(&conf.network, cid, ifname) {
        Ok(r) if r.released => return Ok(()),
        // netd held no endpoint. An ADD whose plugin died after making the pair, before netd
        // took the endpoint, leaves an unmarked pair that nobody else removes. Rare (a DEL
        // after a failed ADD, or a repeated DEL), so the one lookup below is not on the
        // common path; a missing link costs the kernel no walk.
        Ok(_) => container_side = false,
        Err(ClientError::Unreachable { path, source }) => eprintln!(
            "netd-cni: netd is not reachable at {} ({source}); removing links only, netd GC releases {cid}/{ifname}",
            path.display()
        ),
        Err(ClientError::Api(api)) if api.kind == ErrorKind::NotFound => {}
        Err(e) => failure = Some(PluginError::from_netd("DEL: detach", e)),
    }

    let mut link_errors = Vec::new();
    let netns = env.netns().filter(|p| links.is_netns(p));
    let veth = netd_core::model::host_veth_name(cid, ifname);
    match links.delete_host_veth(&veth, Some(&conf.network), netns) {
        Ok(Removal::Deleted | Removal::Missing) => {}
        Ok(Removal::Foreign(why)) => {
            // Its other end may well be this container's interface (a veth marked for
            // another network): leave that alone too.
            eprintln!("netd-cni: left host link {veth} alone: {why}");
            container_side = false;
        }
        Err(e) => link_errors.push(format!("{veth}: {e}")),
    }
    if let (true, Some(netns)) = (container_side, netns) {
        if let Err(e) = links.delete_container_iface(netns, ifname) {
            link_errors.push(format!("{ifname} in {}: {e}", netns.display()));
        }
    }
    if let Some(e) = failure {
        return Err(e.with_note(&link_errors.join("; ")));
    }
    if !link_errors.is_empty() {
        return Err(PluginError::link(
            "DEL could not remove links",
            link_errors.join("; "),
        ));
    }
    Ok(())
}

fn check(env: &Env, conf: &NetConf, netd: &dyn Netd, links: &dyn Links) -> Result<(), PluginError> {
    if !conf.version.supports_check() {
        return Err(PluginError::IncompatibleVersion {
            msg: format!("config version {} does not allow CHECK", conf.version),
        });
    }
    let cid = env.container_id()?;
    let ifname = env.ifname()?;
    let netns = container_netns(env, links)?;
    let prev = conf
        .prev_result
        .as_ref()
        .ok_or_else(|| PluginError::invalid_config("CHECK needs prevResult"))?;

    let att = netd
        .endpoint(&conf.network, cid, ifname)
        .map_err(|e| match e {
            ClientError::Api(api) if api.kind == ErrorKind::NotFound => {
                PluginError::check(format!(
                    "netd holds no endpoint for container {cid} interface {ifname} on network {}",
                    conf.network
                ))
            }
            e => PluginError::from_netd("CHECK: endpoint", e),
        })?;
    let veth = &att.endpoint.host_veth;
    let link_err =
        |e: crate::links::LinkError| PluginError::link("CHECK could not read links", e.to_string());
    if !links.link_exists(veth).map_err(link_err)? {
        return Err(PluginError::check(format!("host link {veth} is missing")));
    }
    let iface = links
        .inspect_container(netns, ifname)
        .map_err(link_err)?
        .ok_or_else(|| {
            PluginError::check(format!(
                "interface {ifname} is missing in {}",
                netns.display()
            ))
        })?;
    if let Some(mac) = att.endpoint.mac {
        if !iface.mac.eq_ignore_ascii_case(&mac.to_string()) {
            return Err(PluginError::check(format!(
                "interface {ifname} in {} has MAC {}, not the {mac} asked for",
                netns.display(),
                iface.mac
            )));
        }
    }
    let expected = shaping::addressing(&att).map_err(|d| PluginError::NetdInternal {
        msg: "CHECK: netd's attachment is inconsistent".into(),
        details: d,
    })?;
    for a in &expected {
        if !iface.addrs.contains(&a.addr) {
            return Err(PluginError::check(format!(
                "interface {ifname} in {} lacks address {}",
                netns.display(),
                a.addr
            )));
        }
        if !prev.ips.iter().any(|ip| ip.address == a.addr) {
            return Err(PluginError::check(format!(
                "prevResult does not list address {} that netd assigned",
                a.addr
            )));
        }
    }
    for r in shaping::routes(att.network.internal, &expected) {
        if !iface.routes.contains(&r) {
            let via = r.gateway.map(|g| format!(" via {g}")).unwrap_or_default();
            return Err(PluginError::check(format!(
                "interface {ifname} in {} lacks route {}{via}",
                netns.display(),
                r.dst
            )));
        }
    }
    Ok(())
}

fn gc(conf: &NetConf, netd: &dyn Netd, links: &dyn Links) -> Result<(), PluginError> {
    if !conf.version.supports_gc_and_status() {
        return Err(PluginError::IncompatibleVersion {
            msg: format!("config version {} does not allow GC", conf.version),
        });
    }
    // Without the list every endpoint would look stale and be released: refuse instead.
    let valid = conf
        .valid_attachments
        .as_ref()
        .ok_or_else(|| {
            PluginError::invalid_config(format!(
                "GC needs cni.dev/valid-attachments; refusing to release every endpoint of network {}",
                conf.network
            ))
        })?
        .iter()
        .map(|a| GcAttachment {
            container_id: a.container_id.clone(),
            ifname: a.ifname.clone(),
        })
        .collect();
    let req = GcRequest {
        network: conf.network.clone(),
        valid,
    };
    let released = netd.gc(&req).map_err(|e| PluginError::from_netd("GC", e))?;
    // The spec: continue past errors and report them together. Only links that are netd's
    // for the endpoint go, by DEL's rule: a veth of that name may be someone else's.
    let mut errors = Vec::new();
    for ep in &released.released {
        let netns = Path::new(&ep.netns);
        let netns = links.is_netns(netns).then_some(netns);
        match links.delete_host_veth(&ep.host_veth, Some(&ep.network), netns) {
            Ok(Removal::Deleted | Removal::Missing) => {}
            Ok(Removal::Foreign(why)) => {
                eprintln!("netd-cni: left host link {} alone: {why}", ep.host_veth)
            }
            Err(e) => errors.push(format!("{}: {e}", ep.host_veth)),
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(PluginError::link(
            format!(
                "GC released {} endpoints but could not remove {} host links",
                released.released.len(),
                errors.len()
            ),
            errors.join("; "),
        ))
    }
}

fn status(conf: &NetConf, netd: &dyn Netd) -> Result<(), PluginError> {
    if !conf.version.supports_gc_and_status() {
        return Err(PluginError::IncompatibleVersion {
            msg: format!("config version {} does not allow STATUS", conf.version),
        });
    }
    netd.status()
        .map(|_| ())
        .map_err(|e| PluginError::NotAvailable {
            msg: format!(
                "plugin not available: netd does not answer at {}",
                netd.socket().display()
            ),
            details: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::links::{ContainerIface, LinkError, Route as LinkRoute};
    use crate::shaping::tests::attachment;
    use netd_api::ApiError;
    use serde_json::{json, Value};
    use std::cell::RefCell;
    use std::collections::BTreeSet;
    use std::ffi::OsString;
    use std::path::PathBuf;

    const NETNS: &str = "/run/netns/c1";

    #[derive(Default)]
    struct FakeNetd {
        calls: RefCell<Vec<String>>,
        attach_err: Option<ApiError>,
        unreachable: bool,
        /// netd holds no endpoint: a release answers `released: false`.
        not_held: bool,
        endpoint: Option<Attachment>,
        released: Vec<netd_core::model::Endpoint>,
        last_attach: RefCell<Option<AttachRequest>>,
    }

    impl FakeNetd {
        fn log(&self, s: String) -> Result<(), ClientError> {
            self.calls.borrow_mut().push(s);
            if self.unreachable {
                return Err(ClientError::Unreachable {
                    path: PathBuf::from("/fake.sock"),
                    source: std::io::ErrorKind::ConnectionRefused.into(),
                });
            }
            Ok(())
        }
    }

    impl Netd for FakeNetd {
        fn socket(&self) -> &Path {
            Path::new("/fake.sock")
        }
        fn attach(
            &self,
            req: &AttachRequest,
            meanwhile: &mut dyn FnMut(),
        ) -> Result<Attachment, ClientError> {
            meanwhile();
            self.log(format!(
                "attach {} {}",
                req.container_id,
                req.port_mappings.len()
            ))?;
            *self.last_attach.borrow_mut() = Some(req.clone());
            match &self.attach_err {
                Some(e) => Err(ClientError::Api(e.clone())),
                None => {
                    let mut a = attachment(true, true, false);
                    a.endpoint.mac = req.mac;
                    Ok(a)
                }
            }
        }
        fn endpoint(&self, n: &str, c: &str, i: &str) -> Result<Attachment, ClientError> {
            self.log(format!("endpoint {n} {c} {i}"))?;
            self.endpoint
                .clone()
                .ok_or_else(|| ClientError::Api(ApiError::not_found("no such endpoint")))
        }
        fn detach(&self, n: &str, c: &str, i: &str) -> Result<Released, ClientError> {
            self.log(format!("detach {n} {c} {i}"))?;
            Ok(Released { released: true })
        }
        fn release(&self, n: &str, c: &str, i: &str) -> Result<Released, ClientError> {
            self.log(format!("release {n} {c} {i}"))?;
            Ok(Released {
                released: !self.not_held,
            })
        }
        fn gc(&self, req: &GcRequest) -> Result<GcResult, ClientError> {
            self.log(format!("gc {} {}", req.network, req.valid.len()))?;
            Ok(GcResult {
                released: self.released.clone(),
            })
        }
        fn status(&self) -> Result<Status, ClientError> {
            self.log("status".into())?;
            Ok(Status {
                version: "0".into(),
                uptime_secs: 1,
                table: "netd".into(),
                networks: 0,
                endpoints: 0,
                published_ports: 0,
                table_elements: 0,
                cni_conf_dir: String::new(),
            })
        }
    }

    #[derive(Default)]
    struct FakeLinks {
        host: RefCell<BTreeSet<String>>,
        /// Host links of netd-cni's names that are not netd's (marked for another network,
        /// or unmarked with the peer elsewhere): `delete_host_veth` leaves them.
        foreign: RefCell<BTreeSet<String>>,
        container: RefCell<Option<ContainerIface>>,
        /// The host veth is gone when attach_veth first runs (netd's reaper took it).
        vanish: std::cell::Cell<bool>,
        fail_at: Option<&'static str>,
        calls: RefCell<Vec<String>>,
    }

    impl FakeLinks {
        fn step(&self, name: &'static str) -> Result<(), LinkError> {
            self.calls.borrow_mut().push(name.to_string());
            if self.fail_at == Some(name) {
                Err(LinkError::Invalid {
                    step: name.into(),
                    msg: "exploded".into(),
                })
            } else {
                Ok(())
            }
        }
    }

    impl Links for FakeLinks {
        fn ensure_bridge(
            &self,
            name: &str,
            addrs: &[ipnet::IpNet],
            _: u32,
            _: &str,
        ) -> Result<u32, LinkError> {
            self.step("ensure_bridge")?;
            assert_eq!(addrs.len(), 2);
            self.host.borrow_mut().insert(name.to_string());
            Ok(7)
        }
        fn create_veth(&self, host: &str, tmp: &str, _: &Path) -> Result<String, LinkError> {
            self.step("create_veth")?;
            assert_eq!(tmp, temp_peer_name(host));
            if self.foreign.borrow().contains(host)
                || !self.host.borrow_mut().insert(host.to_string())
            {
                return Err(LinkError::Os {
                    step: "create_veth".into(),
                    err: std::io::Error::from_raw_os_error(libc::EEXIST),
                });
            }
            Ok("02:00:00:00:00:01".into())
        }
        fn attach_veth(
            &self,
            host: &str,
            bridge: u32,
            _: u32,
            isolated: bool,
            _: &str,
        ) -> Result<(), LinkError> {
            self.step("attach_veth")?;
            if self.vanish.replace(false) {
                self.host.borrow_mut().remove(host);
                return Err(LinkError::Os {
                    step: "attach_veth".into(),
                    err: std::io::Error::from_raw_os_error(libc::ENODEV),
                });
            }
            assert_eq!((bridge, isolated), (7, false));
            assert!(self.host.borrow().contains(host));
            Ok(())
        }
        fn delete_link(&self, name: &str) -> Result<bool, LinkError> {
            self.calls.borrow_mut().push(format!("delete_link {name}"));
            Ok(self.host.borrow_mut().remove(name))
        }
        fn link_exists(&self, name: &str) -> Result<bool, LinkError> {
            Ok(self.host.borrow().contains(name) || self.foreign.borrow().contains(name))
        }
        fn delete_host_veth(
            &self,
            name: &str,
            _: Option<&str>,
            _: Option<&Path>,
        ) -> Result<Removal, LinkError> {
            self.calls
                .borrow_mut()
                .push(format!("delete_host_veth {name}"));
            if self.foreign.borrow().contains(name) {
                return Ok(Removal::Foreign("someone else's".into()));
            }
            Ok(if self.host.borrow_mut().remove(name) {
                Removal::Deleted
            } else {
                Removal::Missing
            })
        }
        fn configure_container(
            &self,
            _: &Path,
            _: &str,
            ifname: &str,
            addrs: &[ipnet::IpNet],
            routes: &[LinkRoute],
            _: u32,
            mac: Option<[u8; 6]>,
        ) -> Result<ContainerIface, LinkError> {
            self.step("configure_container")?;
            assert_eq!(routes.len(), 2);
            let c = ContainerIface {
                ifname: ifname.into(),
                mac: mac
                    .map(|m| netd_core::model::MacAddr(m).to_string())
                    .unwrap_or_else(|| "02:00:00:00:00:02".into()),
                index: 3,
                mtu: 1500,
                up: true,
                addrs: addrs.to_vec(),
                routes: routes.to_vec(),
            };
            *self.container.borrow_mut() = Some(c.clone());
            Ok(c)
        }
        fn inspect_container(
            &self,
            _: &Path,
            _: &str,
        ) -> Result<Option<ContainerIface>, LinkError> {
            Ok(self.container.borrow().clone())
        }
        fn delete_container_iface(&self, _: &Path, _: &str) -> Result<bool, LinkError> {
            self.calls
                .borrow_mut()
                .push("delete_container_iface".into());
            Ok(self.container.borrow_mut().take().is_some())
        }
        fn is_netns(&self, path: &Path) -> bool {
            path == Path::new(NETNS)
        }
    }

    fn env(command: &str, netns: &str) -> Env {
        let vars = [
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", netns),
        ];
        Env::from_lookup(|k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| OsString::from(v))
        })
        .unwrap()
    }

    fn conf(extra: Value) -> Vec<u8> {
        let mut v = json!({"cniVersion": "1.1.0", "name": "web", "type": "netd-cni"});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        v.to_string().into_bytes()
    }

    fn go(
        command: &str,
        netns: &str,
        input: &[u8],
        netd: FakeNetd,
        links: &FakeLinks,
    ) -> (Result<Option<String>, PluginError>, Vec<String>) {
        let netd = std::rc::Rc::new(netd);
        let shared = netd.clone();
        let connect = move |_: &Path| -> Box<dyn Netd> { Box::new(Shared(shared.clone())) };
        let out = run(&env(command, netns), input, &connect, links);
        let calls = netd.calls.borrow().clone();
        (out, calls)
    }

    struct Shared(std::rc::Rc<FakeNetd>);
    impl Netd for Shared {
        fn socket(&self) -> &Path {
            self.0.socket()
        }
        fn attach(
            &self,
            r: &AttachRequest,
            meanwhile: &mut dyn FnMut(),
        ) -> Result<Attachment, ClientError> {
            self.0.attach(r, meanwhile)
        }
        fn endpoint(&self, n: &str, c: &str, i: &str) -> Result<Attachment, ClientError> {
            self.0.endpoint(n, c, i)
        }
        fn detach(&self, n: &str, c: &str, i: &str) -> Result<Released, ClientError> {
            self.0.detach(n, c, i)
        }
        fn release(&self, n: &str, c: &str, i: &str) -> Result<Released, ClientError> {
            self.0.release(n, c, i)
        }
        fn gc(&self, r: &GcRequest) -> Result<GcResult, ClientError> {
            self.0.gc(r)
        }
        fn status(&self) -> Result<Status, ClientError> {
            self.0.status()
        }
    }

    fn veth() -> String {
        netd_core::model::host_veth_name("c1", "eth0")
    }

    #[test]
    fn add_builds_links_and_reports_them() {
        let links = FakeLinks::default();
        let input = conf(json!({"runtimeConfig": {"portMappings": [
            {"hostPort": 8080, "containerPort": 80}
        ]}}));
        let (out, calls) = go("ADD", NETNS, &input, FakeNetd::default(), &links);
        let out: Value = serde_json::from_str(&out.unwrap().unwrap()).unwrap();
        assert_eq!(calls, vec!["attach c1 1"]);
        assert_eq!(out["cniVersion"], "1.1.0");
        assert_eq!(out["interfaces"][0]["name"], veth());
        assert_eq!(out["interfaces"][1]["sandbox"], NETNS);
        assert_eq!(out["ips"][0]["interface"], 1);
        assert!(links.host.borrow().contains(&veth()));
    }

    /// ADD with CNI_ARGS; returns the outcome and what the plugin asked netd for.
    fn add_with_args(
        cni_args: &str,
        input: &[u8],
    ) -> (Result<Option<String>, PluginError>, Option<AttachRequest>) {
        let vars = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", NETNS),
            ("CNI_ARGS", cni_args),
        ];
        let env = Env::from_lookup(|k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| OsString::from(v))
        })
        .unwrap();
        let netd = std::rc::Rc::new(FakeNetd::default());
        let shared = netd.clone();
        let connect = move |_: &Path| -> Box<dyn Netd> { Box::new(Shared(shared.clone())) };
        let out = run(&env, input, &connect, &FakeLinks::default());
        let req = netd.last_attach.borrow().clone();
        (out, req)
    }

    #[test]
    fn fixed_addresses_and_mac_reach_netd_and_the_interface() {
        let input =
            conf(json!({"runtimeConfig": {"ips": ["10.88.0.9"], "mac": "02:42:00:00:00:09"}}));
        let (out, req) = add_with_args("", &input);
        let out: Value = serde_json::from_str(&out.unwrap().unwrap()).unwrap();
        let req = req.unwrap();
        assert_eq!(req.ips[0].to_string(), "10.88.0.9");
        assert_eq!(req.mac.unwrap().to_string(), "02:42:00:00:00:09");
        assert_eq!(out["interfaces"][1]["mac"], "02:42:00:00:00:09");

        // The Kubernetes convention: CNI_ARGS, with other keys ignored under IgnoreUnknown.
        let (out, req) = add_with_args(
            "IgnoreUnknown=1;K8S_POD_NAME=p;IP=10.88.0.9,fd00:88::9;MAC=02:42:00:00:00:0a",
            &conf(json!({})),
        );
        out.unwrap();
        let req = req.unwrap();
        assert_eq!(req.ips.len(), 2);
        assert_eq!(req.mac.unwrap().to_string(), "02:42:00:00:00:0a");
        // The same address both ways is fine; different ones are refused before netd is asked.
        let (out, _) = add_with_args("IP=10.88.0.9", &input);
        out.unwrap();
        let (out, req) = add_with_args("IP=10.88.0.10", &input);
        let e = out.unwrap_err();
        assert_eq!(e.code(), 7);
        assert!(
            e.to_string().contains("10.88.0.9") && e.to_string().contains("10.88.0.10"),
            "{e}"
        );
        assert!(req.is_none());
        let (out, req) = add_with_args("MAC=02:42:00:00:00:0b", &input);
        assert_eq!(out.unwrap_err().code(), 7);
        assert!(req.is_none());
        let (out, req) = add_with_args("K8S_POD_NAME=p", &conf(json!({})));
        assert_eq!(out.unwrap_err().code(), 4);
        assert!(req.is_none());
    }

    #[test]
    fn add_after_a_plugin_that_made_the_interface_is_refused_up_front() {
        let prev = json!({"cniVersion": "1.1.0",
            "interfaces": [{"name": "eth0", "sandbox": NETNS}],
            "ips": [{"address": "10.0.0.2/24", "interface": 0}]});
        let (out, req) = add_with_args("", &conf(json!({"prevResult": prev})));
        let e = out.unwrap_err();
        assert_eq!(e.code(), 7);
        assert!(e.to_string().contains("already made interface eth0"), "{e}");
        assert!(req.is_none(), "netd was not asked");

        // Another interface of the chain (say a macvlan net1) is kept, and ours appended.
        let prev = json!({"cniVersion": "1.1.0",
            "interfaces": [{"name": "net1", "sandbox": NETNS}],
            "ips": [{"address": "10.0.0.2/24", "interface": 0}]});
        let (out, _) = add_with_args("", &conf(json!({"prevResult": prev})));
        let out: Value = serde_json::from_str(&out.unwrap().unwrap()).unwrap();
        assert_eq!(out["interfaces"][0]["name"], "net1");
        assert_eq!(out["interfaces"][2]["name"], "eth0");
        assert_eq!(out["ips"][0]["address"], "10.0.0.2/24");
        assert_eq!(out["ips"][1]["interface"], 2);
    }

    #[test]
    fn add_rolls_back_at_each_failing_step() {
        for step in [
            "ensure_bridge",
            "create_veth",
            "attach_veth",
            "configure_container",
        ] {
            let links = FakeLinks {
                fail_at: Some(step),
                ..Default::default()
            };
            let (out, calls) = go("ADD", NETNS, &conf(json!({})), FakeNetd::default(), &links);
            let e = out.unwrap_err();
            assert_eq!(e.code(), 102, "{step}");
            assert!(e.to_string().contains(step), "{e}");
            assert_eq!(calls, vec!["attach c1 0", "detach web c1 eth0"], "{step}");
            assert!(!links.host.borrow().contains(&veth()), "{step}: veth left");
        }
    }

    #[test]
    fn add_over_a_foreign_link_gives_the_endpoint_back_and_leaves_the_link() {
        // netd holds no endpoint (else it refuses the attach), yet a host link of the name
        // exists that is not this container's leftover.
        let links = FakeLinks::default();
        links.foreign.borrow_mut().insert(veth());
        let (out, calls) = go("ADD", NETNS, &conf(json!({})), FakeNetd::default(), &links);
        let e = out.unwrap_err();
        assert_eq!(e.code(), 100);
        assert!(e.to_string().contains("already attached"), "{e}");
        assert_eq!(calls, vec!["attach c1 0", "detach web c1 eth0"]);
        assert!(links.foreign.borrow().contains(&veth()));
    }

    /// The pair an earlier ADD made and never marked (its plugin died before netd answered)
    /// is replaced: before, such an ADD was refused as "already attached" until the
    /// container's namespace went away.
    #[test]
    fn add_over_its_own_unmarked_leftover_replaces_it() {
        let links = FakeLinks::default();
        links.host.borrow_mut().insert(veth());
        let (out, calls) = go("ADD", NETNS, &conf(json!({})), FakeNetd::default(), &links);
        out.unwrap();
        assert_eq!(calls, vec!["attach c1 0"]);
        assert_eq!(
            links.calls.borrow()[..4],
            [
                "create_veth".to_string(),
                "create_veth".to_string(),
                format!("delete_host_veth {}", veth()),
                "create_veth".to_string(),
            ]
        );
        assert!(links.host.borrow().contains(&veth()));
    }

    /// netd's reaper may take the pair made while netd worked (see the ADD): the plugin makes
    /// it again, once, and goes on.
    #[test]
    fn add_makes_the_pair_again_when_it_vanished_before_the_answer() {
        let links = FakeLinks::default();
        links.vanish.set(true);
        let (out, calls) = go("ADD", NETNS, &conf(json!({})), FakeNetd::default(), &links);
        out.unwrap();
        assert_eq!(calls, vec!["attach c1 0"]);
        assert_eq!(
            links.calls.borrow()[..5],
            [
                "create_veth",
                "ensure_bridge",
                "attach_veth",
                "create_veth",
                "attach_veth"
            ]
        );
        assert!(links.host.borrow().contains(&veth()));
    }

    /// A DEL that netd answers with "no endpoint" removes this container's unmarked pair
    /// itself (netd's reaper takes marked veths only) and leaves the container side alone;
    /// a link of the name that is not netd's is left, and so is the container's interface.
    #[test]
    fn del_removes_only_what_is_netds() {
        let not_held = || FakeNetd {
            not_held: true,
            ..Default::default()
        };
        let links = FakeLinks::default();
        links.host.borrow_mut().insert(veth());
        let (out, calls) = go("DEL", NETNS, &conf(json!({})), not_held(), &links);
        assert_eq!(out.unwrap(), None);
        assert_eq!(calls, vec!["release web c1 eth0"]);
        assert!(links.host.borrow().is_empty());
        assert_eq!(
            *links.calls.borrow(),
            vec![format!("delete_host_veth {}", veth())]
        );

        for netd in [
            not_held(),
            FakeNetd {
                unreachable: true,
                ..Default::default()
            },
        ] {
            let links = FakeLinks::default();
            links.foreign.borrow_mut().insert(veth());
            let (out, _) = go("DEL", NETNS, &conf(json!({})), netd, &links);
            assert_eq!(out.unwrap(), None);
            assert!(links.foreign.borrow().contains(&veth()));
            assert_eq!(
                *links.calls.borrow(),
                vec![format!("delete_host_veth {}", veth())],
                "the container's interface was touched"
            );
        }
    }

    #[test]
    fn add_maps_netd_refusals() {
        let cases = [
            (
                ApiError::not_found("network web not found"),
                7,
                "not known to netd",
            ),
            (
                ApiError::conflict("port 8080/tcp is taken by c0"),
                100,
                "rejected by netd: port 8080/tcp",
            ),
            (ApiError::internal("nft failed"), 101, "nft failed"),
        ];
        for (err, code, text) in cases {
            let netd = FakeNetd {
                attach_err: Some(err),
                ..Default::default()
            };
            let links = FakeLinks::default();
            let (out, calls) = go("ADD", NETNS, &conf(json!({})), netd, &links);
            let e = out.unwrap_err();
            assert_eq!(e.code(), code);
            assert!(e.to_string().contains(text), "{e}");
            assert_eq!(calls.len(), 1, "no detach when attach failed");
            // The pair made while netd worked is removed again.
            assert_eq!(
                *links.calls.borrow(),
                vec!["create_veth".to_string(), format!("delete_link {}", veth())]
            );
            assert!(links.host.borrow().is_empty(), "{:?}", links.host.borrow());
        }
    }

    #[test]
    fn add_checks_the_netns() {
        let links = FakeLinks::default();
        let (out, _) = go(
            "ADD",
            "/nonexistent/ns",
            &conf(json!({})),
            FakeNetd::default(),
            &links,
        );
        assert_eq!(out.unwrap_err().code(), 3);
        let (out, _) = go(
            "ADD",
            "/proc/self/status",
            &conf(json!({})),
            FakeNetd::default(),
            &links,
        );
        let e = out.unwrap_err();
        assert_eq!(e.code(), 4);
        assert!(e.to_string().contains("CNI_NETNS"), "{e}");
    }

    #[test]
    fn del_is_idempotent_and_survives_a_missing_daemon() {
        let links = FakeLinks::default();
        let (out, _) = go("ADD", NETNS, &conf(json!({})), FakeNetd::default(), &links);
        out.unwrap();
        let (out, calls) = go("DEL", NETNS, &conf(json!({})), FakeNetd::default(), &links);
        assert_eq!(out.unwrap(), None);
        assert_eq!(calls, vec!["release web c1 eth0"]);
        // netd removes the veth pair after answering; the plugin leaves it alone.
        assert!(links.host.borrow().iter().any(|l| *l == veth()));
        // Without netd the plugin removes the links itself.
        let netd = FakeNetd {
            unreachable: true,
            ..Default::default()
        };
        let (out, _) = go("DEL", NETNS, &conf(json!({})), netd, &links);
        assert_eq!(out.unwrap(), None);
        assert!(links.host.borrow().iter().all(|l| l == "nd-web"));
        assert!(links.container.borrow().is_none());
        // Again, with netd gone and the namespace gone.
        let netd = FakeNetd {
            unreachable: true,
            ..Default::default()
        };
        let (out, _) = go("DEL", "/nonexistent/ns", &conf(json!({})), netd, &links);
        assert_eq!(out.unwrap(), None);
        let (out, _) = go("DEL", "", &conf(json!({})), FakeNetd::default(), &links);
        assert_eq!(out.unwrap(), None);
    }

    #[test]
    fn check_compares_netd_links_and_prev_result() {
        let links = FakeLinks::default();
        let (out, _) = go("ADD", NETNS, &conf(json!({})), FakeNetd::default(), &links);
        let prev: Value = serde_json::from_str(&out.unwrap().unwrap()).unwrap();
        let input = conf(json!({"prevResult": prev}));
        let with_endpoint = || FakeNetd {
            endpoint: Some(attachment(true, true, false)),
            ..Default::default()
        };
        let (out, _) = go("CHECK", NETNS, &input, with_endpoint(), &links);
        assert_eq!(out.unwrap(), None);

        let (out, _) = go("CHECK", NETNS, &input, FakeNetd::default(), &links);
        let e = out.unwrap_err();
        assert_eq!(e.code(), 103);
        assert!(e.to_string().contains("netd holds no endpoint"), "{e}");

        links
            .container
            .borrow_mut()
            .as_mut()
            .unwrap()
            .routes
            .remove(0);
        let (out, _) = go("CHECK", NETNS, &input, with_endpoint(), &links);
        let e = out.unwrap_err();
        assert!(
            e.to_string()
                .contains("lacks route 0.0.0.0/0 via 10.88.0.1"),
            "{e}"
        );

        links.container.borrow_mut().as_mut().unwrap().routes = vec![];
        let internal = || FakeNetd {
            endpoint: Some(attachment(true, true, true)),
            ..Default::default()
        };
        let (out, _) = go("CHECK", NETNS, &input, internal(), &links);
        assert_eq!(
            out.unwrap(),
            None,
            "internal networks have no routes to check"
        );

        links.container.borrow_mut().as_mut().unwrap().addrs.pop();
        let (out, _) = go("CHECK", NETNS, &input, with_endpoint(), &links);
        let e = out.unwrap_err();
        assert!(e.to_string().contains("lacks address fd00:88::5/64"), "{e}");

        links.host.borrow_mut().remove(&veth());
        let (out, _) = go("CHECK", NETNS, &input, with_endpoint(), &links);
        assert!(out.unwrap_err().to_string().contains("is missing"));

        let (out, _) = go("CHECK", NETNS, &conf(json!({})), with_endpoint(), &links);
        assert_eq!(out.unwrap_err().code(), 7);
        let old =
            json!({"cniVersion": "0.3.1", "name": "web", "type": "netd-cni", "prevResult": prev});
        let (out, _) = go(
            "CHECK",
            NETNS,
            old.to_string().as_bytes(),
            with_endpoint(),
            &links,
        );
        assert_eq!(out.unwrap_err().code(), 1);
    }

    #[test]
    fn gc_deletes_released_host_links() {
        let links = FakeLinks::default();
        let gone = attachment(true, false, false).endpoint;
        links.host.borrow_mut().insert(gone.host_veth.clone());
        let netd = FakeNetd {
            released: vec![gone.clone()],
            ..Default::default()
        };
        let input = conf(json!({"cni.dev/valid-attachments": [
            {"containerID": "c2", "ifname": "eth0"}
        ]}));
        let (out, calls) = go("GC", "", &input, netd, &links);
        assert_eq!(out.unwrap(), None);
        assert_eq!(calls, vec!["gc web 1"]);
        assert!(!links.host.borrow().contains(&gone.host_veth));

        // A link of the released endpoint's name that is not netd's stays.
        links.foreign.borrow_mut().insert(gone.host_veth.clone());
        let netd = FakeNetd {
            released: vec![gone.clone()],
            ..Default::default()
        };
        let (out, _) = go("GC", "", &input, netd, &links);
        assert_eq!(out.unwrap(), None);
        assert!(links.foreign.borrow().contains(&gone.host_veth));

        let (out, calls) = go("GC", "", &conf(json!({})), FakeNetd::default(), &links);
        assert_eq!(out.unwrap_err().code(), 7);
        assert!(calls.is_empty());
    }

    #[test]
    fn status_and_version() {
        let links = FakeLinks::default();
        let (out, _) = go("STATUS", "", &conf(json!({})), FakeNetd::default(), &links);
        assert_eq!(out.unwrap(), None);
        let netd = FakeNetd {
            unreachable: true,
            ..Default::default()
        };
        let (out, _) = go("STATUS", "", &conf(json!({})), netd, &links);
        let e = out.unwrap_err();
        assert_eq!(e.code(), 50);
        assert!(e.to_string().contains("/fake.sock"), "{e}");

        let (out, calls) = go("VERSION", "", b"", FakeNetd::default(), &links);
        let v: Value = serde_json::from_str(&out.unwrap().unwrap()).unwrap();
        assert_eq!(v["cniVersion"], "1.1.0");
        assert!(calls.is_empty());
        let (out, _) = go(
            "VERSION",
            "",
            br#"{"cniVersion":"0.4.0"}"#,
            FakeNetd::default(),
            &links,
        );
        assert!(out.unwrap().unwrap().contains(r#""cniVersion":"0.4.0""#));
    }

    #[test]
    fn temp_peer_names_fit_and_differ() {
        let a = temp_peer_name(&veth());
        assert_eq!(a.len(), 15);
        assert_ne!(a, veth());
        assert_ne!(
            a,
            temp_peer_name(&netd_core::model::host_veth_name("c2", "eth0"))
        );
        netd_core::model::validate_ifname(&a).unwrap();
    }
}
