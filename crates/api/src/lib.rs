//! The protocol netd speaks on its Unix socket: HTTP/1.1 with JSON bodies under `/v1/`, so
//! `curl --unix-socket /run/netd/netd.sock http://netd/v1/networks` works for people too.
//!
//! | method | path                                           | body            | answer              |
//! |--------|------------------------------------------------|-----------------|---------------------|
//! | GET    | /v1/status                                     |                 | [`Status`]          |
//! | GET    | /v1/networks                                   |                 | `[Network]`         |
//! | POST   | /v1/networks                                   | [`CreateNetwork`] | `Network`         |
//! | GET    | /v1/networks/{name}                            |                 | `Network`           |
//! | DELETE | /v1/networks/{name}                            |                 | `{}`                |
//! | GET    | /v1/endpoints                                  |                 | `[Endpoint]`        |
//! | POST   | /v1/endpoints                                  | [`AttachRequest`] | [`Attachment`]    |
//! | POST   | /v1/endpoints?ports=omit (CNI ADD: the answer's endpoint leaves its `ports` out) | [`AttachRequest`] | [`Attachment`] |
//! | GET    | /v1/endpoints/{network}/{container}/{ifname}   |                 | [`Attachment`]      |
//! | DELETE | /v1/endpoints/{network}/{container}/{ifname}   |                 | [`Released`]        |
//! | DELETE | …/{ifname}?links=remove (CNI DEL: also removes the host veth, after answering) | | [`Released`] |
//! | POST   | /v1/gc                                         | [`GcRequest`]   | [`GcResult`]        |
//!
//! An [`AttachRequest`] may carry fixed addresses and a MAC, and an `ensure_network`: the
//! network to create first if it does not exist (refused if it exists with other subnets).
//!
//! Errors are `{"error": {"kind": ..., "message": ...}}` ([`ApiError`]) with a matching status.

pub mod client;
pub mod http;

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use netd_core::model::{Endpoint, GatewayMode, MacAddr, Network, PortMapping, RequestedAddr};

pub use client::{Client, ClientError};

/// Default path of netd's socket.
pub const DEFAULT_SOCKET: &str = "/run/netd/netd.sock";
/// Largest request body netd reads (a container publishing 10,000 ports fits well within it).
pub const MAX_BODY: usize = 4 << 20;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateNetwork {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<Ipv4Net>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<String>,
    #[serde(default)]
    pub ipv6: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet6: Option<Ipv6Net>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway6: Option<Ipv6Addr>,
    /// Without IPv4 (an IPv6-only network); needs `ipv6`.
    #[serde(default)]
    pub no_ipv4: bool,
    #[serde(default)]
    pub internal: bool,
    /// Inter-container communication; None means the default (on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icc: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_mode_ipv4: Option<GatewayMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_mode_ipv6: Option<GatewayMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The conflist's `cniVersion`; None: the daemon's default (`cni_version` in netd.toml).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cni_version: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttachRequest {
    pub network: String,
    pub container_id: String,
    pub ifname: String,
    /// The container's network namespace path (CNI_NETNS).
    pub netns: String,
    /// Written in runs (`netd_core::model::port_runs`): 10,000 same-numbered ports are one
    /// entry on the wire.
    #[serde(default, with = "netd_core::model::port_runs")]
    pub port_mappings: Vec<PortMapping>,
    /// Fixed addresses (at most one per family, inside the network's subnets); a family
    /// without one gets an allocated address.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<RequestedAddr>,
    /// The container interface's MAC; None: the kernel picks one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<MacAddr>,
    /// Create the network like this if it does not exist yet (a conflist that carries its
    /// subnets, as on Kubernetes nodes). If it exists, its subnets must be these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ensure_network: Option<CreateNetwork>,
}

/// What the plugin needs to build the links: the network (bridge, gateway, flags) and the
/// endpoint with its allocated addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub network: Network,
    pub endpoint: Endpoint,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Released {
    /// False when netd held no such endpoint (DEL is idempotent).
    pub released: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GcAttachment {
    pub container_id: String,
    pub ifname: String,
}

/// CNI GC: release every endpoint of `network` that is not in `valid`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GcRequest {
    pub network: String,
    pub valid: Vec<GcAttachment>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcResult {
    pub released: Vec<Endpoint>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub uptime_secs: u64,
    pub table: String,
    pub networks: usize,
    pub endpoints: usize,
    pub published_ports: usize,
    /// Elements in netd's table as last applied (sets and maps; the chains are fixed).
    #[serde(default)]
    pub table_elements: usize,
    /// Where netd writes its conflists (netctl doctor compares them with the networks).
    #[serde(default)]
    pub cni_conf_dir: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request is malformed or asks for something impossible.
    Invalid,
    NotFound,
    /// The request clashes with existing state (a name, subnet or port is taken).
    Conflict,
    /// The kernel or the disk refused; the request changed nothing.
    Internal,
}

impl ErrorKind {
    pub fn status(self) -> u16 {
        match self {
            ErrorKind::Invalid => 400,
            ErrorKind::NotFound => 404,
            ErrorKind::Conflict => 409,
            ErrorKind::Internal => 500,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ApiError {
            kind,
            message: message.into(),
        }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Invalid, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Conflict, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }
}

/// The JSON envelope of an error answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ApiError,
}
