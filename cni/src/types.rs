//! The CNI wire types (SPEC.md 1.1.0 and the 0.3/0.4 result shapes), written with serde rather
//! than taken from the `cni-plugin` crate, which drops `hostIP`, lacks GC/STATUS and claims
//! versions it does not implement.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::PluginError;
use netd_core::model::{self, PortMapping, Proto};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CniVersion {
    V0_3_0,
    V0_3_1,
    V0_4_0,
    V1_0_0,
    V1_1_0,
}

impl CniVersion {
    pub const ALL: [CniVersion; 5] = [
        CniVersion::V0_3_0,
        CniVersion::V0_3_1,
        CniVersion::V0_4_0,
        CniVersion::V1_0_0,
        CniVersion::V1_1_0,
    ];
    pub const LATEST: CniVersion = CniVersion::V1_1_0;

    pub fn as_str(self) -> &'static str {
        match self {
            CniVersion::V0_3_0 => "0.3.0",
            CniVersion::V0_3_1 => "0.3.1",
            CniVersion::V0_4_0 => "0.4.0",
            CniVersion::V1_0_0 => "1.0.0",
            CniVersion::V1_1_0 => "1.1.0",
        }
    }

    pub fn parse(s: &str) -> Option<CniVersion> {
        CniVersion::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// 1.0.0 removed `ips[].version`; older results must carry it.
    pub fn ips_carry_version(self) -> bool {
        self < CniVersion::V1_0_0
    }

    pub fn supports_check(self) -> bool {
        self >= CniVersion::V0_4_0
    }

    pub fn supports_gc_and_status(self) -> bool {
        self >= CniVersion::V1_1_0
    }

    /// Interface `mtu` arrived with 1.1.0.
    pub fn has_interface_mtu(self) -> bool {
        self >= CniVersion::V1_1_0
    }

    pub fn supported_list() -> Vec<&'static str> {
        CniVersion::ALL.iter().map(|v| v.as_str()).collect()
    }
}

impl fmt::Display for CniVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Top-level keys a plugin configuration may carry: the spec's plugin keys, the ones a runtime
/// injects, the well-known optional ones, and ours. Anything under `cni.dev/` is reserved for
/// the runtime and accepted too.
const KNOWN_KEYS: &[&str] = &[
    "cniVersion",
    "cniVersions",
    "name",
    "type",
    "capabilities",
    "runtimeConfig",
    "args",
    "prevResult",
    "ipMasq",
    "ipam",
    "dns",
    "network",
    "socket",
    "subnets",
    "gatewayModeIpv4",
    "gatewayModeIpv6",
];

const VALID_ATTACHMENTS: &str = "cni.dev/valid-attachments";
const OLD_ATTACHMENTS: &str = "cni.dev/attachments";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        *self == Dns::default()
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConf {
    name: Option<String>,
    #[serde(rename = "type")]
    plugin_type: Option<String>,
    network: Option<String>,
    socket: Option<PathBuf>,
    subnets: Option<Vec<String>>,
    gateway_mode_ipv4: Option<String>,
    gateway_mode_ipv6: Option<String>,
    #[serde(default)]
    runtime_config: Option<RawRuntimeConfig>,
    prev_result: Option<Value>,
    ipam: Option<Map<String, Value>>,
    dns: Option<Dns>,
    // Checked for type only: accepted so conflists written for other plugins' conventions load.
    #[allow(dead_code)]
    ip_masq: Option<bool>,
    #[allow(dead_code)]
    capabilities: Option<Map<String, Value>>,
    #[allow(dead_code)]
    args: Option<Map<String, Value>>,
    #[allow(dead_code)]
    cni_versions: Option<Vec<String>>,
    #[serde(rename = "cni.dev/valid-attachments")]
    valid_attachments: Option<Vec<GcAttachment>>,
    // libcni sends the old key too because the spec once named it so (cni#1101).
    #[serde(rename = "cni.dev/attachments")]
    attachments: Option<Vec<GcAttachment>>,
}

/// Deserialized by hand for the reason given at [`RawPortMapping`]: with `#[serde(flatten)]`
/// serde buffered the whole `portMappings` list before decoding it.
#[derive(Debug, Default)]
struct RawRuntimeConfig {
    port_mappings: Option<Vec<RawPortMapping>>,
    /// The `ips` capability: "ADDR" or "ADDR/PREFIX" strings, either family.
    ips: Option<Vec<String>>,
    /// The `mac` capability.
    mac: Option<String>,
    // Runtimes pass only capabilities the conflist declares; one we do not implement is the
    // conflist author's business, so other keys are tolerated (and reported on stderr).
    other: BTreeMap<String, Value>,
}

impl<'de> Deserialize<'de> for RawRuntimeConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RawRuntimeConfig;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("the runtimeConfig object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<RawRuntimeConfig, A::Error> {
                let mut rc = RawRuntimeConfig::default();
                let mut seen = Seen([false; 3]);
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "portMappings" => {
                            seen.first::<A::Error>(0, "portMappings")?;
                            rc.port_mappings = map.next_value()?;
                        }
                        "ips" => {
                            seen.first::<A::Error>(1, "ips")?;
                            rc.ips = map.next_value()?;
                        }
                        "mac" => {
                            seen.first::<A::Error>(2, "mac")?;
                            rc.mac = map.next_value()?;
                        }
                        _ => {
                            let v = map.next_value::<Value>()?;
                            rc.other.insert(key, v);
                        }
                    }
                }
                Ok(rc)
            }
        }
        d.deserialize_map(V)
    }
}

/// The input in one pass: every top-level key as a JSON value, except `runtimeConfig`, which
/// is decoded straight into its typed form (its key stays in `map`, as null). With 10,000
/// port mappings, building a JSON value of each one first was most of the plugin's parse.
struct SplitInput {
    map: Map<String, Value>,
    runtime_config: Option<RawRuntimeConfig>,
}

impl<'de> Deserialize<'de> for SplitInput {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = SplitInput;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut access: A,
            ) -> Result<SplitInput, A::Error> {
                let mut map = Map::new();
                let mut runtime_config = None;
                while let Some(key) = access.next_key::<String>()? {
                    if key == "runtimeConfig" {
                        runtime_config = access.next_value()?;
                        map.insert(key, Value::Null);
                    } else {
                        let v = access.next_value()?;
                        map.insert(key, v);
                    }
                }
                Ok(SplitInput {
                    map,
                    runtime_config,
                })
            }
        }
        d.deserialize_map(V)
    }
}

/// `i64` ports so that 0, negative and >65535 get a message naming the port rather than a
/// serde type error.
///
/// Deserialized by hand rather than with `#[serde(flatten)]`: flatten buffers every entry
/// into serde's generic content tree before matching fields, and a runtime may send 10,000
/// mappings in one ADD (issue #14), where that buffering dominated the plugin's parse.
#[derive(Debug, Default)]
struct RawPortMapping {
    host_port: Option<i64>,
    container_port: Option<i64>,
    protocol: Option<String>,
    host_ip: Option<String>,
    /// Keys other than the four above, sorted and last-one-wins like a JSON object's keys.
    unknown: BTreeMap<String, Value>,
}

impl<'de> Deserialize<'de> for RawPortMapping {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(PortMappingVisitor)
    }
}

/// A key of a port mapping object: one of ours (matched without allocating), or another.
enum PortKey {
    HostPort,
    ContainerPort,
    Protocol,
    HostIp,
    Other(String),
}

impl<'de> Deserialize<'de> for PortKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl serde::de::Visitor<'_> for KeyVisitor {
            type Value = PortKey;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a port mapping key")
            }
            fn visit_str<E: serde::de::Error>(self, k: &str) -> Result<PortKey, E> {
                Ok(match k {
                    "hostPort" => PortKey::HostPort,
                    "containerPort" => PortKey::ContainerPort,
                    "protocol" => PortKey::Protocol,
                    "hostIP" => PortKey::HostIp,
                    other => PortKey::Other(other.to_string()),
                })
            }
        }
        d.deserialize_identifier(KeyVisitor)
    }
}

/// Which of an object's known keys were seen. A repeated one fails the fast path, and the
/// input then goes the general way (`NetConf::parse`), where JSON values keep the last
/// occurrence, as netd-cni always read such input.
struct Seen<const N: usize>([bool; N]);

impl<const N: usize> Seen<N> {
    fn first<E: serde::de::Error>(&mut self, i: usize, name: &'static str) -> Result<(), E> {
        if std::mem::replace(&mut self.0[i], true) {
            Err(E::duplicate_field(name))
        } else {
            Ok(())
        }
    }
}

struct PortMappingVisitor;

impl<'de> serde::de::Visitor<'de> for PortMappingVisitor {
    type Value = RawPortMapping;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a port mapping object")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut map: A,
    ) -> Result<RawPortMapping, A::Error> {
        let mut pm = RawPortMapping::default();
        let mut seen = Seen([false; 4]);
        while let Some(key) = map.next_key::<PortKey>()? {
            match key {
                PortKey::HostPort => {
                    seen.first::<A::Error>(0, "hostPort")?;
                    pm.host_port = map.next_value()?;
                }
                PortKey::ContainerPort => {
                    seen.first::<A::Error>(1, "containerPort")?;
                    pm.container_port = map.next_value()?;
                }
                PortKey::Protocol => {
                    seen.first::<A::Error>(2, "protocol")?;
                    pm.protocol = map.next_value()?;
                }
                PortKey::HostIp => {
                    seen.first::<A::Error>(3, "hostIP")?;
                    pm.host_ip = map.next_value()?;
                }
                PortKey::Other(k) => {
                    let v = map.next_value::<Value>()?;
                    pm.unknown.insert(k, v);
                }
            }
        }
        Ok(pm)
    }
}

/// One entry of `cni.dev/valid-attachments`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcAttachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// A validated plugin configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    pub version: CniVersion,
    pub name: String,
    /// The netd network to attach to.
    pub network: String,
    pub socket: PathBuf,
    /// The network as the configuration describes it, for netd to create on first use
    /// (`subnets` and the gateway modes); None without `subnets`.
    pub ensure: Option<EnsureNetwork>,
    pub port_mappings: Vec<PortMapping>,
    /// Fixed addresses from `runtimeConfig.ips`.
    pub ips: Vec<model::RequestedAddr>,
    /// The MAC from `runtimeConfig.mac`.
    pub mac: Option<model::MacAddr>,
    pub prev_result: Option<CniResult>,
    pub dns: Option<Dns>,
    /// Only on GC: the union of both keys; None when neither was sent (not the same as empty).
    pub valid_attachments: Option<Vec<GcAttachment>>,
    /// runtimeConfig keys we ignore, for a note on stderr.
    pub ignored_runtime_config: Vec<String>,
}

/// A network described by its configuration (Kubernetes nodes: containerd renders the node's
/// pod CIDRs into `subnets` from its `conf_template`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnsureNetwork {
    pub subnet4: Option<ipnet::Ipv4Net>,
    pub subnet6: Option<ipnet::Ipv6Net>,
    pub gateway_mode4: Option<model::GatewayMode>,
    pub gateway_mode6: Option<model::GatewayMode>,
}

impl EnsureNetwork {
    /// The create request netd gets with the attach: a network named `network`, declaring
    /// the configuration's own `cniVersion` in the conflist netd writes for it.
    pub fn request(&self, network: &str, version: CniVersion) -> netd_api::CreateNetwork {
        netd_api::CreateNetwork {
            name: network.to_string(),
            subnet: self.subnet4,
            ipv6: self.subnet6.is_some(),
            subnet6: self.subnet6,
            no_ipv4: self.subnet4.is_none(),
            gateway_mode_ipv4: self.gateway_mode4,
            gateway_mode_ipv6: self.gateway_mode6,
            cni_version: Some(version.as_str().to_string()),
            ..Default::default()
        }
    }
}

fn ensure_network(raw: &RawConf) -> Result<Option<EnsureNetwork>, PluginError> {
    let mode = |key: &str, v: &Option<String>| -> Result<Option<model::GatewayMode>, PluginError> {
        v.as_deref()
            .map(|m| {
                m.parse()
                    .map_err(|e| PluginError::invalid_config(format!("{key}: {e}")))
            })
            .transpose()
    };
    let gateway_mode4 = mode("gatewayModeIpv4", &raw.gateway_mode_ipv4)?;
    let gateway_mode6 = mode("gatewayModeIpv6", &raw.gateway_mode_ipv6)?;
    let subnets = raw.subnets.as_deref().unwrap_or_default();
    if subnets.is_empty() {
        if gateway_mode4.is_some() || gateway_mode6.is_some() {
            return Err(PluginError::invalid_config(
                "gatewayModeIpv4/gatewayModeIpv6 describe a network to create and need \"subnets\"",
            ));
        }
        return Ok(None);
    }
    let mut e = EnsureNetwork {
        subnet4: None,
        subnet6: None,
        gateway_mode4,
        gateway_mode6,
    };
    for (i, s) in subnets.iter().enumerate() {
        let at = format!("subnets[{i}]");
        let net: IpNet = s.parse().map_err(|_| {
            PluginError::invalid_config(format!(
                "{at}: {s:?} is not a subnet (CIDR, e.g. 10.244.1.0/24)"
            ))
        })?;
        if net != net.trunc() {
            return Err(PluginError::invalid_config(format!(
                "{at}: {s} has host bits set; did you mean {}?",
                net.trunc()
            )));
        }
        let twice = match net {
            IpNet::V4(n) => e.subnet4.replace(n).is_some(),
            IpNet::V6(n) => e.subnet6.replace(n).is_some(),
        };
        if twice {
            return Err(PluginError::invalid_config(format!(
                "{at}: a second {} subnet; a netd network has at most one per family",
                if net.addr().is_ipv4() { "IPv4" } else { "IPv6" }
            )));
        }
    }
    if e.subnet4.is_none() && e.gateway_mode4.is_some() {
        return Err(PluginError::invalid_config(
            "gatewayModeIpv4 is set but \"subnets\" has no IPv4 subnet",
        ));
    }
    if e.subnet6.is_none() && e.gateway_mode6.is_some() {
        return Err(PluginError::invalid_config(
            "gatewayModeIpv6 is set but \"subnets\" has no IPv6 subnet",
        ));
    }
    Ok(Some(e))
}

/// The `cniVersion` the caller asked for, if the input says; errors echo it.
pub fn requested_version(input: &[u8]) -> Option<String> {
    // Only `cniVersion` is kept: the other keys are skipped without building values, since
    // the input may carry thousands of port mappings (issue #14).
    #[derive(Deserialize)]
    struct Version {
        #[serde(rename = "cniVersion")]
        cni_version: Option<Value>,
    }
    let v: Version = serde_json::from_slice(input).ok()?;
    v.cni_version?.as_str().map(str::to_string)
}

/// Parses the version only: VERSION must not insist on a whole configuration.
pub fn parse_version(s: &str) -> Result<CniVersion, PluginError> {
    CniVersion::parse(s).ok_or_else(|| PluginError::IncompatibleVersion {
        msg: format!(
            "incompatible CNI version {s:?}: netd-cni supports {}",
            CniVersion::supported_list().join(", ")
        ),
    })
}

fn decode_value(input: &[u8]) -> Result<Map<String, Value>, PluginError> {
    let value: Value = serde_json::from_slice(input).map_err(|e| {
        PluginError::decode("cannot decode the network configuration", e.to_string())
    })?;
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(PluginError::decode(
            "the network configuration is not a JSON object",
            String::new(),
        )),
    }
}

impl NetConf {
    pub fn parse(input: &[u8]) -> Result<NetConf, PluginError> {
        // The fast path decodes runtimeConfig typed in the same pass. Input it refuses goes
        // the general way (all of it as JSON values first), so every error reads as before.
        let (map, typed_rc) = match serde_json::from_slice::<SplitInput>(input) {
            Ok(split) => (split.map, Some(split.runtime_config)),
            Err(_) => (decode_value(input)?, None),
        };
        let version = match map.get("cniVersion") {
            Some(Value::String(s)) => parse_version(s)?,
            Some(other) => {
                return Err(PluginError::decode(
                    format!("cniVersion must be a string, not {other}"),
                    String::new(),
                ))
            }
            None => {
                return Err(PluginError::IncompatibleVersion {
                    msg: "the network configuration has no cniVersion".into(),
                })
            }
        };
        if let Some(key) = map
            .keys()
            .find(|k| !KNOWN_KEYS.contains(&k.as_str()) && !k.starts_with("cni.dev/"))
        {
            return Err(PluginError::UnsupportedField {
                field: key.clone(),
                reason: format!(
                    "netd-cni does not know the configuration key {key:?} (value {})",
                    excerpt(&map[key])
                ),
            });
        }
        let has_gc_key = map.contains_key(VALID_ATTACHMENTS) || map.contains_key(OLD_ATTACHMENTS);
        let mut raw: RawConf = serde_json::from_value(Value::Object(map))
            .map_err(|e| PluginError::decode("invalid network configuration", e.to_string()))?;
        if let Some(rc) = typed_rc {
            raw.runtime_config = rc;
        }
        let ensure = ensure_network(&raw)?;

        let name = raw
            .name
            .filter(|n| !n.is_empty())
            .ok_or_else(|| PluginError::invalid_config("the configuration has no network name"))?;
        validate_cni_name(&name)?;
        if raw.plugin_type.as_deref().unwrap_or("").is_empty() {
            return Err(PluginError::invalid_config(
                "the configuration has no plugin type",
            ));
        }
        let network = raw.network.unwrap_or_else(|| name.clone());
        model::validate_network_name(&network).map_err(|e| PluginError::InvalidConfig {
            msg: format!("invalid netd network: {e}"),
            details: String::new(),
        })?;
        if let Some(ipam) = &raw.ipam {
            if ipam.contains_key("type") {
                return Err(PluginError::invalid_config(
                    "netd-cni takes addresses from netd and does not delegate to an IPAM plugin: remove \"ipam\"",
                ));
            }
        }
        let socket = raw
            .socket
            .unwrap_or_else(|| PathBuf::from(netd_api::DEFAULT_SOCKET));
        if socket.as_os_str().is_empty() {
            return Err(PluginError::invalid_config("\"socket\" is empty"));
        }

        let rc = raw.runtime_config.unwrap_or_default();
        let port_mappings = rc
            .port_mappings
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .map(|(i, pm)| port_mapping(i, pm))
            .collect::<Result<Vec<_>, _>>()?;
        let ips = rc
            .ips
            .unwrap_or_default()
            .iter()
            .enumerate()
            .map(|(i, a)| {
                a.parse().map_err(|e| {
                    PluginError::invalid_config(format!("runtimeConfig.ips[{i}]: {e}"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        // Runtimes that leave the MAC unset may still send the key empty.
        let mac = match rc.mac.as_deref() {
            None | Some("") => None,
            Some(m) => Some(
                m.parse()
                    .map_err(|e| PluginError::invalid_config(format!("runtimeConfig.mac: {e}")))?,
            ),
        };

        let prev_result = match raw.prev_result {
            None => None,
            Some(v) => Some(
                serde_json::from_value::<CniResult>(v)
                    .map_err(|e| PluginError::decode("cannot decode prevResult", e.to_string()))?,
            ),
        };

        // libcni sends `null` for an empty list, so only a missing key means "not told".
        let valid_attachments = has_gc_key.then(|| {
            let mut all = raw.valid_attachments.unwrap_or_default();
            for x in raw.attachments.unwrap_or_default() {
                if !all.contains(&x) {
                    all.push(x);
                }
            }
            all
        });

        Ok(NetConf {
            version,
            name,
            network,
            socket,
            ensure,
            port_mappings,
            ips,
            mac,
            prev_result,
            dns: raw.dns,
            valid_attachments,
            ignored_runtime_config: rc.other.into_keys().collect(),
        })
    }
}

/// A value for an error message, cut short: the input may be megabytes.
fn excerpt(v: &Value) -> String {
    const MAX: usize = 80;
    let s = v.to_string();
    match s.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s,
    }
}

/// libcni's rule for network names (`pkg/utils`): they end up in file paths.
fn validate_cni_name(name: &str) -> Result<(), PluginError> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if first_ok && rest_ok {
        Ok(())
    } else {
        Err(PluginError::invalid_config(format!(
            "invalid network name {name:?}: it must match ^[a-zA-Z0-9][a-zA-Z0-9_.-]*$"
        )))
    }
}

fn port_mapping(i: usize, mut pm: RawPortMapping) -> Result<PortMapping, PluginError> {
    // Built only for an error: a runtime may send 10,000 mappings.
    let at = || format!("runtimeConfig.portMappings[{i}]");
    // Go's encoding/json matches keys in any letter case, and go-cni (containerd's CRI plugin
    // and `ctr`) sends its struct's untagged field names: `HostPort`, `ContainerPort`,
    // `Protocol`, `HostIP`. The reference portmap plugin takes them, so fold them onto ours.
    for (key, value) in std::mem::take(&mut pm.unknown) {
        let folded = match key.to_ascii_lowercase().as_str() {
            "hostport" if pm.host_port.is_none() => value.as_i64().map(|v| pm.host_port = Some(v)),
            "containerport" if pm.container_port.is_none() => {
                value.as_i64().map(|v| pm.container_port = Some(v))
            }
            "protocol" if pm.protocol.is_none() => {
                value.as_str().map(|v| pm.protocol = Some(v.to_string()))
            }
            "hostip" if pm.host_ip.is_none() => {
                value.as_str().map(|v| pm.host_ip = Some(v.to_string()))
            }
            _ => None,
        };
        if folded.is_none() {
            return Err(PluginError::UnsupportedField {
                field: format!("{}.{key}", at()),
                reason: format!(
                    "port mappings take hostPort, containerPort (numbers), protocol and hostIP (strings), once each, in any letter case; not {key:?} (value {})",
                    excerpt(&value)
                ),
            });
        }
    }
    let port = |what: &str, v: Option<i64>| -> Result<u16, PluginError> {
        let v = v.ok_or_else(|| PluginError::invalid_config(format!("{} has no {what}", at())))?;
        u16::try_from(v).ok().filter(|p| *p != 0).ok_or_else(|| {
            PluginError::invalid_config(format!("{}.{what} {v} is not a port (1..=65535)", at()))
        })
    };
    let host_port = port("hostPort", pm.host_port)?;
    let container_port = port("containerPort", pm.container_port)?;
    let protocol = match pm.protocol.as_deref() {
        None | Some("") => Proto::Tcp,
        Some(p) => p
            .parse::<Proto>()
            .map_err(|e| PluginError::invalid_config(format!("{}.protocol: {e}", at())))?,
    };
    // Runtimes that serialise an unset host IP as "" mean "every address", like an absent key.
    let host_ip = match pm.host_ip.as_deref() {
        None | Some("") => None,
        Some(s) => Some(s.parse::<IpAddr>().map_err(|_| {
            PluginError::invalid_config(format!("{}.hostIP {s:?} is not an IP address", at()))
        })?),
    };
    Ok(PortMapping {
        host_port,
        container_port,
        protocol,
        host_ip,
    })
}

/// A CNI result. Unknown keys, here and in the parts, are carried through untouched because
/// the spec makes a chained plugin pass prevResult on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CniResult {
    #[serde(default)]
    pub cni_version: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub dns: Dns,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IpConfig {
    /// "4" or "6"; only in 0.3.x/0.4.0 results.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    pub address: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Index into the result's `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Route {
    pub dst: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl CniResult {
    /// Puts the result in the shape of `version`: the field that came and went between
    /// versions is `ips[].version`.
    pub fn shape_for(&mut self, version: CniVersion) {
        self.cni_version = version.as_str().to_string();
        for ip in &mut self.ips {
            ip.version = version.ips_carry_version().then(|| {
                match ip.address {
                    IpNet::V4(_) => "4",
                    IpNet::V6(_) => "6",
                }
                .to_string()
            });
        }
        if !version.has_interface_mtu() {
            for iface in &mut self.interfaces {
                iface.mtu = None;
            }
        }
    }
}

/// The error object printed on stdout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorReply {
    pub cni_version: String,
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl ErrorReply {
    pub fn new(version: &str, e: &PluginError) -> Self {
        ErrorReply {
            cni_version: version.to_string(),
            code: e.code(),
            msg: e.to_string(),
            details: e.details(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionReply {
    pub cni_version: String,
    pub supported_versions: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<NetConf, PluginError> {
        NetConf::parse(v.to_string().as_bytes())
    }

    fn base(version: &str) -> Value {
        json!({"cniVersion": version, "name": "web", "type": "netd-cni"})
    }

    #[test]
    fn every_supported_version_parses() {
        for v in CniVersion::ALL {
            let conf = parse(base(v.as_str())).unwrap();
            assert_eq!(conf.version, v);
            assert_eq!(conf.network, "web");
            assert_eq!(conf.socket, PathBuf::from(netd_api::DEFAULT_SOCKET));
            assert!(conf.port_mappings.is_empty());
            assert!(conf.prev_result.is_none());
        }
    }

    #[test]
    fn netd_offers_exactly_the_versions_the_plugin_answers() {
        assert_eq!(
            CniVersion::supported_list(),
            netd_core::conflist::CNI_VERSIONS
        );
        assert_eq!(
            CniVersion::parse(netd_core::conflist::CNI_VERSION),
            Some(CniVersion::V1_0_0)
        );
    }

    #[test]
    fn full_config_parses() {
        let conf = parse(json!({
            "cniVersion": "1.1.0",
            "name": "web",
            "type": "netd-cni",
            "network": "backend",
            "socket": "/tmp/netd.sock",
            "capabilities": {"portMappings": true},
            "ipMasq": true,
            "ipam": {},
            "dns": {"nameservers": ["10.0.0.53"], "search": ["example.org"]},
            "args": {"cni": {"labels": []}},
            "runtimeConfig": {"portMappings": [
                {"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": "127.0.0.1"},
                {"hostPort": 5353, "containerPort": 53, "protocol": "UDP"},
                {"hostPort": 9000, "containerPort": 9000, "hostIP": ""},
                {"hostPort": 443, "containerPort": 8443, "hostIP": "2001:db8::1"}
            ]},
            "cni.dev/some-future-key": 1
        }))
        .unwrap();
        assert_eq!(conf.network, "backend");
        assert_eq!(conf.socket, PathBuf::from("/tmp/netd.sock"));
        assert_eq!(
            conf.port_mappings,
            vec![
                PortMapping {
                    host_port: 8080,
                    container_port: 80,
                    protocol: Proto::Tcp,
                    host_ip: Some("127.0.0.1".parse().unwrap()),
                },
                PortMapping {
                    host_port: 5353,
                    container_port: 53,
                    protocol: Proto::Udp,
                    host_ip: None,
                },
                PortMapping {
                    host_port: 9000,
                    container_port: 9000,
                    protocol: Proto::Tcp,
                    host_ip: None,
                },
                PortMapping {
                    host_port: 443,
                    container_port: 8443,
                    protocol: Proto::Tcp,
                    host_ip: Some("2001:db8::1".parse().unwrap()),
                },
            ]
        );
        assert_eq!(conf.dns.unwrap().nameservers, vec!["10.0.0.53"]);
    }

    #[test]
    fn unknown_top_level_key_is_code_2() {
        let mut v = base("1.0.0");
        v["bridge"] = json!("cni0");
        let e = parse(v).unwrap_err();
        assert_eq!(e.code(), 2);
        assert!(e.to_string().contains("bridge"), "{e}");
        let mut v = base("1.0.0");
        v["blob"] = json!("x".repeat(10_000));
        assert!(parse(v).unwrap_err().details().len() < 200);
    }

    #[test]
    fn unknown_port_mapping_key_is_code_2() {
        let mut v = base("1.0.0");
        v["runtimeConfig"] = json!({"portMappings": [
            {"hostPort": 1, "containerPort": 1, "hostAddress": "1.2.3.4"}
        ]});
        let e = parse(v.clone()).unwrap_err();
        assert_eq!(e.code(), 2);
        assert!(
            e.to_string()
                .contains("runtimeConfig.portMappings[0].hostAddress"),
            "{e}"
        );
        // A key given twice (in two letter cases) is refused, not silently chosen.
        v["runtimeConfig"] = json!({"portMappings": [
            {"hostPort": 1, "HostPort": 2, "containerPort": 1}
        ]});
        assert_eq!(parse(v.clone()).unwrap_err().code(), 2);
        // So is a port given as a string.
        v["runtimeConfig"] = json!({"portMappings": [{"HostPort": "1", "containerPort": 1}]});
        assert_eq!(parse(v).unwrap_err().code(), 2);
    }

    #[test]
    fn port_mapping_values_of_the_wrong_type_are_refused() {
        let mut v = base("1.0.0");
        v["runtimeConfig"] = json!({"portMappings": [
            {"hostPort": 1, "containerPort": 1, "protocol": 6}
        ]});
        let e = parse(v.clone()).unwrap_err();
        assert!(
            e.to_string().contains("invalid network configuration"),
            "{e}"
        );
        // null is the same as an absent key.
        v["runtimeConfig"] = json!({"portMappings": [{"hostPort": null, "containerPort": 1}]});
        let e = parse(v.clone()).unwrap_err();
        assert!(
            e.to_string()
                .contains("runtimeConfig.portMappings[0] has no hostPort"),
            "{e}"
        );
        v["runtimeConfig"] = json!({"portMappings": [
            {"hostPort": 1, "containerPort": 2, "protocol": null, "hostIP": null}
        ]});
        let c = parse(v).unwrap();
        assert_eq!(c.port_mappings[0].protocol, Proto::Tcp);
        assert_eq!(c.port_mappings[0].host_ip, None);
    }

    #[test]
    fn requested_version_reads_only_cni_version() {
        let v = json!({"cniVersion": "0.4.0", "runtimeConfig": {"portMappings": [{"x": [1]}]}});
        assert_eq!(
            requested_version(v.to_string().as_bytes()).as_deref(),
            Some("0.4.0")
        );
        assert_eq!(requested_version(br#"{"cniVersion": 4}"#), None);
        assert_eq!(requested_version(br#"{"name": "x"}"#), None);
        assert_eq!(requested_version(b"not json"), None);
    }

    /// containerd's CRI plugin (go-cni 1.1) sends the Go field names, as the real runtime
    /// test in tests/netns/tests/containerd.rs showed.
    #[test]
    fn go_cni_port_mapping_field_names_are_accepted() {
        let mut v = base("1.0.0");
        v["runtimeConfig"] = json!({"portMappings": [
            {"HostPort": 8080, "ContainerPort": 80, "Protocol": "tcp", "HostIP": ""},
            {"hostport": 5353, "containerport": 53, "protocol": "udp", "hostIp": "127.0.0.1"}
        ]});
        let c = parse(v).unwrap();
        assert_eq!(c.port_mappings.len(), 2);
        assert_eq!(c.port_mappings[0].host_port, 8080);
        assert_eq!(c.port_mappings[0].container_port, 80);
        assert_eq!(c.port_mappings[0].host_ip, None);
        assert_eq!(c.port_mappings[1].host_port, 5353);
        assert_eq!(c.port_mappings[1].container_port, 53);
        assert_eq!(
            c.port_mappings[1].host_ip,
            Some("127.0.0.1".parse().unwrap())
        );
    }

    #[test]
    fn other_runtime_config_keys_are_tolerated() {
        let mut v = base("1.0.0");
        v["runtimeConfig"] = json!({"bandwidth": {"ingressRate": 1}});
        let conf = parse(v).unwrap();
        assert_eq!(conf.ignored_runtime_config, vec!["bandwidth"]);
    }

    #[test]
    fn fixed_addresses_and_mac_come_from_runtime_config() {
        let mut v = base("1.0.0");
        v["runtimeConfig"] = json!({"ips": ["10.1.0.5/24", "fd00::5"], "mac": "02:42:AC:11:00:02"});
        let conf = parse(v).unwrap();
        let ips: Vec<String> = conf.ips.iter().map(|i| i.to_string()).collect();
        assert_eq!(ips, vec!["10.1.0.5/24", "fd00::5"]);
        assert_eq!(conf.mac.unwrap().to_string(), "02:42:ac:11:00:02");
        assert!(conf.ignored_runtime_config.is_empty());

        let mut v = base("1.0.0");
        v["runtimeConfig"] = json!({"ips": ["10.1.0.5", "nope"]});
        let e = parse(v).unwrap_err();
        assert_eq!(e.code(), 7);
        assert!(e.to_string().contains("runtimeConfig.ips[1]"), "{e}");
        let mut v = base("1.0.0");
        v["runtimeConfig"] = json!({"mac": "ff:ff:ff:ff:ff:ff"});
        let e = parse(v).unwrap_err();
        assert_eq!(e.code(), 7);
        assert!(e.to_string().contains("multicast"), "{e}");
        let mut v = base("1.0.0");
        v["runtimeConfig"] = json!({"mac": ""});
        assert_eq!(parse(v).unwrap().mac, None);
    }

    #[test]
    fn subnets_describe_a_network_to_create() {
        let mut v = base("1.0.0");
        v["network"] = json!("pods");
        v["subnets"] = json!(["10.244.1.0/24", "fd00:10:244:1::/64"]);
        v["gatewayModeIpv6"] = json!("routed");
        let conf = parse(v).unwrap();
        let e = conf.ensure.unwrap();
        let req = e.request("pods", conf.version);
        assert_eq!(req.name, "pods");
        assert_eq!(req.subnet.unwrap().to_string(), "10.244.1.0/24");
        assert_eq!(req.subnet6.unwrap().to_string(), "fd00:10:244:1::/64");
        assert!(req.ipv6 && !req.no_ipv4);
        assert_eq!(req.gateway_mode_ipv6, Some(model::GatewayMode::Routed));
        assert_eq!(req.gateway_mode_ipv4, None);
        assert_eq!(req.cni_version.as_deref(), Some("1.0.0"));

        let mut v = base("1.0.0");
        v["subnets"] = json!(["fd00:10:244:1::/64"]);
        let req = parse(v)
            .unwrap()
            .ensure
            .unwrap()
            .request("web", CniVersion::V1_1_0);
        assert!(req.no_ipv4 && req.ipv6);

        // An empty list (a template rendered before the node had a pod CIDR) is no spec.
        let mut v = base("1.0.0");
        v["subnets"] = json!([]);
        assert_eq!(parse(v).unwrap().ensure, None);
        assert_eq!(parse(base("1.0.0")).unwrap().ensure, None);

        for (subnets, mode4, want) in [
            (
                json!(["10.244.1.5/24"]),
                None,
                "host bits set; did you mean 10.244.1.0/24",
            ),
            (
                json!(["10.244.1.0/24", "10.244.2.0/24"]),
                None,
                "second IPv4 subnet",
            ),
            (json!(["nope"]), None, "subnets[0]"),
            (json!(["fd00::/64"]), Some("nat"), "no IPv4 subnet"),
            (json!([]), Some("nat"), "need \"subnets\""),
            (json!(["10.244.1.0/24"]), Some("bogus"), "gatewayModeIpv4"),
        ] {
            let mut v = base("1.0.0");
            v["subnets"] = subnets.clone();
            if let Some(m) = mode4 {
                v["gatewayModeIpv4"] = json!(m);
            }
            let e = parse(v).unwrap_err();
            assert_eq!(e.code(), 7, "{subnets}");
            assert!(e.to_string().contains(want), "{subnets}: {e}");
        }
    }

    #[test]
    fn bad_versions_are_code_1() {
        for bad in ["0.2.0", "0.1.0", "1.2.0", "", "1.1"] {
            let e = parse(base(bad)).unwrap_err();
            assert_eq!(e.code(), 1, "{bad}");
            assert!(e.to_string().contains("1.1.0"), "{e}");
        }
        let e = parse(json!({"name": "web", "type": "netd-cni"})).unwrap_err();
        assert_eq!(e.code(), 1);
        let e = parse(json!({"cniVersion": 1, "name": "web", "type": "netd-cni"})).unwrap_err();
        assert_eq!(e.code(), 6);
    }

    #[test]
    fn ports_are_validated() {
        for (hp, cp) in [(0, 80), (80, 0), (65536, 80), (-1, 80), (80, 70000)] {
            let mut v = base("1.0.0");
            v["runtimeConfig"] = json!({"portMappings": [{"hostPort": hp, "containerPort": cp}]});
            let e = parse(v).unwrap_err();
            assert_eq!(e.code(), 7, "{hp}:{cp}");
            assert!(e.to_string().contains("not a port"), "{e}");
        }
        let mut v = base("1.0.0");
        v["runtimeConfig"] = json!({"portMappings": [{"hostPort": 65535, "containerPort": 1}]});
        assert_eq!(parse(v).unwrap().port_mappings[0].host_port, 65535);

        let mut v = base("1.0.0");
        v["runtimeConfig"] = json!({"portMappings": [{"containerPort": 1}]});
        assert_eq!(parse(v).unwrap_err().code(), 7);

        let mut v = base("1.0.0");
        v["runtimeConfig"] =
            json!({"portMappings": [{"hostPort": 1, "containerPort": 1, "protocol": "icmp"}]});
        assert_eq!(parse(v).unwrap_err().code(), 7);

        let mut v = base("1.0.0");
        v["runtimeConfig"] =
            json!({"portMappings": [{"hostPort": 1, "containerPort": 1, "hostIP": "localhost"}]});
        let e = parse(v).unwrap_err();
        assert_eq!(e.code(), 7);
        assert!(e.to_string().contains("localhost"), "{e}");
    }

    #[test]
    fn names_are_validated() {
        let mut v = base("1.0.0");
        v["network"] = json!("../etc");
        assert_eq!(parse(v).unwrap_err().code(), 7);
        let mut v = base("1.0.0");
        v["name"] = json!("-x");
        assert_eq!(parse(v).unwrap_err().code(), 7);
        let mut v = base("1.0.0");
        v.as_object_mut().unwrap().remove("name");
        assert_eq!(parse(v).unwrap_err().code(), 7);
        let mut v = base("1.0.0");
        v.as_object_mut().unwrap().remove("type");
        assert_eq!(parse(v).unwrap_err().code(), 7);
    }

    #[test]
    fn delegated_ipam_is_refused() {
        let mut v = base("1.0.0");
        v["ipam"] = json!({"type": "host-local"});
        assert_eq!(parse(v).unwrap_err().code(), 7);
    }

    #[test]
    fn a_repeated_key_reads_as_its_last_occurrence() {
        // The fast path leaves such input to the general one, which keeps the last value.
        let head = r#"{"cniVersion":"1.0.0","name":"web","type":"netd-cni","runtimeConfig":"#;
        let pm = |port: u16| format!(r#"{{"hostPort":{port},"containerPort":80}}"#);
        let twice_rc = format!(
            r#"{head}{{"portMappings":[{}],"portMappings":[{}]}}}}"#,
            pm(80),
            pm(81)
        );
        let twice_pm = format!(
            r#"{head}{{"portMappings":[{{"hostPort":80,"hostPort":81,"containerPort":80}}]}}}}"#
        );
        let once = format!(r#"{head}{{"portMappings":[{}]}}}}"#, pm(81));
        let want = NetConf::parse(once.as_bytes()).unwrap().port_mappings;
        assert_eq!(want[0].host_port, 81);
        for input in [twice_rc, twice_pm] {
            let got = NetConf::parse(input.as_bytes()).unwrap().port_mappings;
            assert_eq!(got, want, "{input}");
        }
    }

    #[test]
    fn malformed_input_is_code_6() {
        assert_eq!(NetConf::parse(b"{not json").unwrap_err().code(), 6);
        assert_eq!(NetConf::parse(b"[1,2]").unwrap_err().code(), 6);
        let mut v = base("1.0.0");
        v["socket"] = json!(5);
        assert_eq!(parse(v).unwrap_err().code(), 6);
        let mut v = base("1.0.0");
        v["prevResult"] = json!({"ips": [{"address": "nope"}]});
        assert_eq!(parse(v).unwrap_err().code(), 6);
    }

    #[test]
    fn gc_attachments_from_both_keys() {
        let mut v = base("1.1.0");
        v["cni.dev/valid-attachments"] = json!([{"containerID": "a", "ifname": "eth0"}]);
        v["cni.dev/attachments"] = json!([
            {"containerID": "a", "ifname": "eth0"},
            {"containerID": "b", "ifname": "eth1"}
        ]);
        let conf = parse(v).unwrap();
        let ids: Vec<_> = conf
            .valid_attachments
            .unwrap()
            .into_iter()
            .map(|a| (a.container_id, a.ifname))
            .collect();
        assert_eq!(
            ids,
            vec![("a".into(), "eth0".into()), ("b".into(), "eth1".into())]
        );
        assert!(parse(base("1.1.0")).unwrap().valid_attachments.is_none());
        let mut v = base("1.1.0");
        v["cni.dev/valid-attachments"] = Value::Null;
        assert_eq!(parse(v).unwrap().valid_attachments, Some(vec![]));
    }

    #[test]
    fn prev_result_unknown_keys_survive_a_round_trip() {
        let prev = json!({
            "cniVersion": "1.1.0",
            "interfaces": [{"name": "lo", "sandbox": "/x", "pciID": "0000:00:01.0"}],
            "ips": [{"address": "10.0.0.2/24", "interface": 0}],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.0.0.1", "priority": 5}],
            "dns": {},
            "custom": {"a": 1}
        });
        let r: CniResult = serde_json::from_value(prev.clone()).unwrap();
        assert_eq!(serde_json::to_value(&r).unwrap(), prev);
    }
}
