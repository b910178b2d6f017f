//! The six CNI commands. netd owns addresses and firewall state; the plugin only builds and
//! removes links, so every command is "ask netd, then make the kernel match".

use std::path::Path;

use netd::api::{
    AttachRequest, Attachment, Client, ClientError, ErrorKind, GcAttachment, GcRequest, GcResult,
    Released, Status,
};

use crate::env::{Command, Env};
use crate::error::PluginError;
use crate::links::Links;
use crate::result::{self, AddOutcome};
use crate::types::{self, CniVersion, NetConf, VersionReply};

/// The netd calls the plugin makes; a trait so the commands can be tested without a daemon.
pub trait Netd {
    fn socket(&self) -> &Path;
    fn attach(&self, req: &AttachRequest) -> Result<Attachment, ClientError>;
    fn endpoint(&self, network: &str, cid: &str, ifname: &str) -> Result<Attachment, ClientError>;
    fn detach(&self, network: &str, cid: &str, ifname: &str) -> Result<Released, ClientError>;
    fn gc(&self, req: &GcRequest) -> Result<GcResult, ClientError>;
    fn status(&self) -> Result<Status, ClientError>;
}

impl Netd for Client {
    fn socket(&self) -> &Path {
        self.socket_path()
    }
    fn attach(&self, req: &AttachRequest) -> Result<Attachment, ClientError> {
        Client::attach(self, req)
    }
    fn endpoint(&self, network: &str, cid: &str, ifname: &str) -> Result<Attachment, ClientError> {
        Client::endpoint(self, network, cid, ifname)
    }
    fn detach(&self, network: &str, cid: &str, ifname: &str) -> Result<Released, ClientError> {
        Client::detach(self, network, cid, ifname)
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
        return version(input).map(Some);
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
fn version(input: &[u8]) -> Result<String, PluginError> {
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
    Ok(serde_json::to_string(&reply).expect("serialisable"))
}

/// Checks that CNI_NETNS names a network namespace: a missing path means the container is
/// gone (code 3: nothing to clean up), anything else is a bad variable (code 4).
fn container_netns<'a>(env: &'a Env, links: &dyn Links) -> Result<&'a Path, PluginError> {
    let netns = env.require_netns()?;
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
        netd::model::fnv1a(&[host_veth.as_bytes()]) >> 12
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
    env.check_args()?;
    let netns = container_netns(env, links)?;

    // A second ADD for an attached interface must fail (spec) without the rollback below
    // tearing down the working attachment, so look before asking netd.
    let expected_veth = netd::model::host_veth_name(cid, ifname);
    let exists = |name: &str| {
        links.link_exists(name).map_err(|e| {
            PluginError::link(format!("ADD failed checking for host link {name}"), e.0)
        })
    };
    let already = |name: &str| {
        PluginError::Conflict {
        msg: format!(
            "container {cid} interface {ifname} is already attached (host link {name} exists); DEL it first"
        ),
        details: String::new(),
    }
    };
    if exists(&expected_veth)? {
        return Err(already(&expected_veth));
    }

    let req = AttachRequest {
        network: conf.network.clone(),
        container_id: cid.to_string(),
        ifname: ifname.to_string(),
        netns: netns.display().to_string(),
        port_mappings: conf.port_mappings.clone(),
    };
    let att = netd.attach(&req).map_err(|e| match e {
        ClientError::Api(api) if api.kind == ErrorKind::NotFound => PluginError::InvalidConfig {
            msg: format!("network {} is not known to netd", conf.network),
            details: api.message,
        },
        e => PluginError::from_netd("attach", e),
    })?;
    let veth = att.endpoint.host_veth.clone();

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

    if veth != expected_veth {
        match exists(&veth) {
            Ok(false) => {}
            Ok(true) => return Err(fail(already(&veth), false)),
            Err(e) => return Err(fail(e, false)),
        }
    }
    let addressing = result::addressing(&att).map_err(|d| {
        fail(
            PluginError::NetdInternal {
                msg: "ADD failed: netd's attachment is inconsistent".into(),
                details: d,
            },
            false,
        )
    })?;
    let addrs: Vec<_> = addressing.iter().map(|a| a.addr).collect();
    let routes = result::routes(att.network.internal, &addressing);
    let net = &att.network;
    let step = |what: String, e: crate::links::LinkError| {
        PluginError::link(format!("ADD failed at {what}"), e.0)
    };

    let bridge_index = links
        .ensure_bridge(&net.bridge, &net.gateway_nets(), net.mtu)
        .map_err(|e| fail(step(format!("ensure_bridge {}", net.bridge), e), false))?;
    let tmp = temp_peer_name(&veth);
    links
        .create_veth(&veth, &tmp, bridge_index, net.mtu, !net.icc, netns)
        .map_err(|e| {
            // create_veth cleans up after itself; deleting again covers a half-done cleanup.
            fail(
                step(format!("create_veth {veth} on {}", net.bridge), e),
                true,
            )
        })?;
    let container = links
        .configure_container(netns, &tmp, ifname, &addrs, &routes, net.mtu)
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
        host_mac: links.link_mac(&veth),
        container: &container,
        netns,
        addressing: &addressing,
        routes: &routes,
    };
    Ok(result::add_result(
        conf.version,
        conf.prev_result.clone(),
        conf.dns.as_ref(),
        &out,
    ))
}

/// Best effort and idempotent: whatever is already gone counts as removed. An unreachable
/// netd does not block the container's removal; netd's GC releases the endpoint later.
fn del(env: &Env, conf: &NetConf, netd: &dyn Netd, links: &dyn Links) -> Result<(), PluginError> {
    let cid = env.container_id()?;
    let ifname = env.ifname()?;
    let mut failure: Option<PluginError> = None;
    match netd.detach(&conf.network, cid, ifname) {
        Ok(_) => {}
        Err(ClientError::Unreachable { path, source }) => eprintln!(
            "netd-cni: netd is not reachable at {} ({source}); removing links only, netd GC releases {cid}/{ifname}",
            path.display()
        ),
        Err(ClientError::Api(api)) if api.kind == ErrorKind::NotFound => {}
        Err(e) => failure = Some(PluginError::from_netd("DEL: detach", e)),
    }

    let mut link_errors = Vec::new();
    if let Some(netns) = env.netns() {
        if links.is_netns(netns) {
            if let Err(e) = links.delete_container_iface(netns, ifname) {
                link_errors.push(format!("{ifname} in {}: {e}", netns.display()));
            }
        }
    }
    let veth = netd::model::host_veth_name(cid, ifname);
    match links.link_exists(&veth) {
        Ok(false) => {}
        Ok(true) => {
            if let Err(e) = links.delete_link(&veth) {
                link_errors.push(format!("{veth}: {e}"));
            }
        }
        Err(e) => link_errors.push(format!("{veth}: {e}")),
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
        |e: crate::links::LinkError| PluginError::link("CHECK could not read links", e.0);
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
    let expected = result::addressing(&att).map_err(|d| PluginError::NetdInternal {
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
    Ok(())
}

fn gc(conf: &NetConf, netd: &dyn Netd, links: &dyn Links) -> Result<(), PluginError> {
    if !conf.version.supports_gc_and_status() {
        return Err(PluginError::IncompatibleVersion {
            msg: format!("config version {} does not allow GC", conf.version),
        });
    }
    let valid = conf
        .valid_attachments
        .iter()
        .flatten()
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
    // The spec: continue past errors and report them together.
    let mut errors = Vec::new();
    for ep in &released.released {
        match links.link_exists(&ep.host_veth) {
            Ok(false) => {}
            Ok(true) => {
                if let Err(e) = links.delete_link(&ep.host_veth) {
                    errors.push(format!("{}: {e}", ep.host_veth));
                }
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
