//! The network model: networks, endpoints and published ports, plus the validation rules that
//! keep names safe to use as interface names and file names. Pure: no I/O.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

/// Linux's IFNAMSIZ minus the terminating NUL.
pub const MAX_IFNAME_LEN: usize = 15;
/// Network names become parts of file names (the conflist) and of bridge names.
pub const MAX_NETWORK_NAME_LEN: usize = 64;
/// The CNI spec sets no limit; container IDs are part of state file names, which must stay
/// under 255 bytes together with a network name (64) and an ifname (15). Runtimes use 64.
pub const MAX_CONTAINER_ID_LEN: usize = 150;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
    Sctp,
}

impl Proto {
    /// The IP protocol number (what `meta l4proto` loads).
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
            Proto::Sctp => 132,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Sctp => "sctp",
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Proto {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Compared in place: the plugin parses one protocol per published port, 10,000 at once.
        [Proto::Tcp, Proto::Udp, Proto::Sctp]
            .into_iter()
            .find(|p| s.eq_ignore_ascii_case(p.as_str()))
            .ok_or_else(|| {
                format!(
                    "unknown protocol {:?} (expected tcp, udp or sctp)",
                    s.to_ascii_lowercase()
                )
            })
    }
}

/// How a network's traffic meets the outside world, per address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GatewayMode {
    /// Masquerade outbound; from outside only published ports (DNAT on host addresses).
    #[default]
    Nat,
    /// No NAT: containers use their own addresses; from outside only published container ports.
    Routed,
    /// No traffic between the network and the outside in either direction.
    Isolated,
}

impl GatewayMode {
    pub fn as_str(self) -> &'static str {
        match self {
            GatewayMode::Nat => "nat",
            GatewayMode::Routed => "routed",
            GatewayMode::Isolated => "isolated",
        }
    }
}

impl fmt::Display for GatewayMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for GatewayMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "nat" => Ok(GatewayMode::Nat),
            "routed" => Ok(GatewayMode::Routed),
            "isolated" => Ok(GatewayMode::Isolated),
            other => Err(format!(
                "unknown gateway mode {other:?} (expected nat, routed or isolated)"
            )),
        }
    }
}

/// A published port as the runtime asks for it (CNI `portMappings`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: Proto,
    /// None: every host address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<IpAddr>,
}

/// How a list of [`PortMapping`]s is written (state files, journal records, API requests and
/// answers): a run of consecutive mappings that step host and container port together (same
/// protocol and host address) is one entry with a `count`, the way runtimes describe
/// `-p 20000-29999:20000-29999`. In memory the list stays one mapping per port, in the
/// order given; only the text is shorter. At 10,000 ports the per-port text was 600 kB that
/// the plugin encoded, netd decoded and the journal wrote and flushed on every ADD.
///
/// A lone mapping is written without `count`, as before, so lists without runs read and
/// write exactly as they always did, and files written before runs existed load unchanged.
/// `PortMapping` denies unknown fields, so a netd that predates `count` refuses such a
/// request or state file instead of publishing only a run's first port.
pub mod port_runs {
    use super::*;
    use serde::de::Error as _;
    use serde::{Deserializer, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Run {
        host_port: u16,
        container_port: u16,
        protocol: Proto,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        host_ip: Option<IpAddr>,
        /// Mappings in the run: host_port + i → container_port + i for i in 0..count.
        #[serde(default = "one", skip_serializing_if = "is_one")]
        count: u16,
    }

    fn one() -> u16 {
        1
    }

    fn is_one(n: &u16) -> bool {
        *n == 1
    }

    fn extends(run: &Run, pm: &PortMapping) -> bool {
        run.protocol == pm.protocol
            && run.host_ip == pm.host_ip
            && u32::from(run.host_port) + u32::from(run.count) == u32::from(pm.host_port)
            && u32::from(run.container_port) + u32::from(run.count) == u32::from(pm.container_port)
            && run.count < u16::MAX
    }

    pub fn serialize<S: Serializer>(ports: &[PortMapping], s: S) -> Result<S::Ok, S::Error> {
        let mut runs: Vec<Run> = Vec::new();
        for pm in ports {
            match runs.last_mut() {
                Some(run) if extends(run, pm) => run.count += 1,
                _ => runs.push(Run {
                    host_port: pm.host_port,
                    container_port: pm.container_port,
                    protocol: pm.protocol,
                    host_ip: pm.host_ip,
                    count: 1,
                }),
            }
        }
        runs.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<PortMapping>, D::Error> {
        let runs = Vec::<Run>::deserialize(d)?;
        let total: usize = runs.iter().map(|r| usize::from(r.count)).sum();
        let mut out = Vec::with_capacity(total);
        for r in runs {
            let last = |first: u16| u32::from(first) + u32::from(r.count) - 1;
            if r.count == 0 || last(r.host_port) > 65535 || last(r.container_port) > 65535 {
                return Err(D::Error::custom(format!(
                    "port run {}->{}/{} count {}: the count must be at least 1 and the run \
                     must end at port 65535 or below",
                    r.host_port, r.container_port, r.protocol, r.count
                )));
            }
            out.extend((0..r.count).map(|i| PortMapping {
                host_port: r.host_port + i,
                container_port: r.container_port + i,
                protocol: r.protocol,
                host_ip: r.host_ip,
            }));
        }
        Ok(out)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    pub name: String,
    pub bridge: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet4: Option<Ipv4Net>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway4: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet6: Option<Ipv6Net>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway6: Option<Ipv6Addr>,
    pub internal: bool,
    pub icc: bool,
    pub gateway_mode4: GatewayMode,
    pub gateway_mode6: GatewayMode,
    pub mtu: u32,
    /// The `cniVersion` the network's conflist declares. State written before netd kept it
    /// has none; those networks get the default of that time.
    #[serde(default = "default_cni_version")]
    pub cni_version: String,
    /// Seconds since the Unix epoch.
    pub created: u64,
}

fn default_cni_version() -> String {
    crate::conflist::CNI_VERSION.to_string()
}

impl Network {
    /// The subnets with their gateway addresses as prefix (what the bridge carries).
    pub fn gateway_nets(&self) -> Vec<ipnet::IpNet> {
        let mut v = Vec::new();
        if let (Some(s), Some(g)) = (self.subnet4, self.gateway4) {
            v.push(ipnet::IpNet::V4(
                Ipv4Net::new(g, s.prefix_len()).expect("valid prefix"),
            ));
        }
        if let (Some(s), Some(g)) = (self.subnet6, self.gateway6) {
            v.push(ipnet::IpNet::V6(
                Ipv6Net::new(g, s.prefix_len()).expect("valid prefix"),
            ));
        }
        v
    }
}

/// An address a runtime asks for (the `ips` capability, CNI_ARGS `IP=`, Docker's `--ip`):
/// `ADDR` or `ADDR/PREFIX`. A prefix, when given, must be the subnet's; the address itself
/// must be a free host address of the network's subnet of its family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RequestedAddr {
    pub addr: IpAddr,
    pub prefix: Option<u8>,
}

impl FromStr for RequestedAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{s:?} is not an IP address (ADDR or ADDR/PREFIX)");
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => None,
            Some(p) => Some(p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(bad)?),
        };
        Ok(RequestedAddr { addr, prefix })
    }
}

impl fmt::Display for RequestedAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.prefix {
            Some(p) => write!(f, "{}/{p}", self.addr),
            None => write!(f, "{}", self.addr),
        }
    }
}

impl TryFrom<String> for RequestedAddr {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<RequestedAddr> for String {
    fn from(a: RequestedAddr) -> String {
        a.to_string()
    }
}

/// A MAC address for a container interface (the `mac` capability, CNI_ARGS `MAC=`, Docker's
/// `--mac-address`). Unicast only: the kernel refuses a multicast address on an Ethernet
/// device (EADDRNOTAVAIL), and all zeros is no address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MacAddr(pub [u8; 6]);

impl FromStr for MacAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{s:?} is not a MAC address (six hex octets: 02:42:ac:11:00:02)");
        let mut b = [0u8; 6];
        let mut parts = s.split(':');
        for octet in &mut b {
            let p = parts.next().filter(|p| p.len() == 2).ok_or_else(bad)?;
            *octet = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        if b[0] & 1 == 1 {
            return Err(format!(
                "{s:?} is a multicast MAC address; a container interface needs a unicast one (first octet even)"
            ));
        }
        if b == [0; 6] {
            return Err(format!("{s:?} is not a usable MAC address"));
        }
        Ok(MacAddr(b))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl TryFrom<String> for MacAddr {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<MacAddr> for String {
    fn from(m: MacAddr) -> String {
        m.to_string()
    }
}

/// One container interface attached to a network. Keyed by (network, container ID, ifname),
/// never by address: addresses are reused after release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    pub network: String,
    pub container_id: String,
    pub ifname: String,
    pub netns: String,
    pub host_veth: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr4: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr6: Option<Ipv6Addr>,
    /// Written in runs ([`port_runs`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty", with = "port_runs")]
    pub ports: Vec<PortMapping>,
    /// The MAC the runtime asked for; None: the kernel's random one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<MacAddr>,
    pub created: u64,
}

impl Endpoint {
    pub fn key(&self) -> EndpointKey {
        EndpointKey {
            network: self.network.clone(),
            container_id: self.container_id.clone(),
            ifname: self.ifname.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EndpointKey {
    pub network: String,
    pub container_id: String,
    pub ifname: String,
}

impl fmt::Display for EndpointKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.network, self.container_id, self.ifname)
    }
}

/// The host-side veth name for a container interface: deterministic, so DEL and CHECK find it
/// from the container ID and ifname alone, and within IFNAMSIZ.
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    format!(
        "vn{:013x}",
        fnv1a(&[container_id.as_bytes(), b"/", ifname.as_bytes()]) >> 12
    )
}

/// FNV-1a, 64 bit: stable across releases and platforms, unlike std's hasher.
pub fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in *part {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{what} is empty")]
    Empty { what: &'static str },
    #[error("{what} {name:?} is {len} bytes long; the limit is {max}")]
    TooLong {
        what: &'static str,
        name: String,
        len: usize,
        max: usize,
    },
    #[error("{what} {name:?} contains {bad:?}; allowed are letters, digits, '_', '.' and '-'")]
    BadChar {
        what: &'static str,
        name: String,
        bad: char,
    },
    #[error("{what} {name:?} must not start with '.' or '-'")]
    BadStart { what: &'static str, name: String },
}

fn check_name(what: &'static str, name: &str, max: usize) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty { what });
    }
    if name.len() > max {
        return Err(NameError::TooLong {
            what,
            name: name.to_string(),
            len: name.len(),
            max,
        });
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(NameError::BadChar {
            what,
            name: name.to_string(),
            bad,
        });
    }
    if name.starts_with('.') || name.starts_with('-') {
        return Err(NameError::BadStart {
            what,
            name: name.to_string(),
        });
    }
    Ok(())
}

/// Interface names: at most 15 bytes, no '/', ':', whitespace (the kernel's dev_valid_name
/// rejects '/', ':' and whitespace; we are stricter so names are safe in files and logs).
pub fn validate_ifname(name: &str) -> Result<(), NameError> {
    check_name("interface name", name, MAX_IFNAME_LEN)
}

pub fn validate_network_name(name: &str) -> Result<(), NameError> {
    check_name("network name", name, MAX_NETWORK_NAME_LEN)
}

pub fn validate_container_id(id: &str) -> Result<(), NameError> {
    check_name("container ID", id, MAX_CONTAINER_ID_LEN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_names_fit_and_are_stable() {
        let a = host_veth_name("abc", "eth0");
        assert_eq!(a.len(), 15);
        assert_eq!(a, host_veth_name("abc", "eth0"));
        assert_ne!(a, host_veth_name("abc", "eth1"));
        assert_ne!(a, host_veth_name("abd", "eth0"));
        validate_ifname(&a).unwrap();
    }

    #[test]
    fn names_are_validated() {
        assert!(validate_ifname("eth0").is_ok());
        assert!(matches!(
            validate_ifname("a-very-long-ifname"),
            Err(NameError::TooLong { .. })
        ));
        assert!(matches!(
            validate_ifname("et/h0"),
            Err(NameError::BadChar { bad: '/', .. })
        ));
        assert!(matches!(
            validate_ifname("et:0"),
            Err(NameError::BadChar { bad: ':', .. })
        ));
        assert!(matches!(
            validate_ifname("e th"),
            Err(NameError::BadChar { bad: ' ', .. })
        ));
        assert!(matches!(validate_ifname(""), Err(NameError::Empty { .. })));
        assert!(matches!(
            validate_container_id("..x"),
            Err(NameError::BadStart { .. })
        ));
        assert!(matches!(
            validate_container_id("a/b"),
            Err(NameError::BadChar { .. })
        ));
        assert!(validate_container_id("ABC123_x.y-z").is_ok());
    }

    #[test]
    fn networks_saved_before_cni_version_was_kept_load_with_the_default() {
        let old = r#"{"name":"a","bridge":"nd-a","subnet4":"10.1.0.0/24","gateway4":"10.1.0.1",
            "internal":false,"icc":true,"gateway_mode4":"nat","gateway_mode6":"nat","mtu":1500,
            "created":1}"#;
        let n: Network = serde_json::from_str(old).unwrap();
        assert_eq!(n.cni_version, crate::conflist::CNI_VERSION);
    }

    #[test]
    fn requested_addresses_parse() {
        let a: RequestedAddr = "10.1.0.5".parse().unwrap();
        assert_eq!((a.addr.to_string(), a.prefix), ("10.1.0.5".into(), None));
        let a: RequestedAddr = "fd00::5/64".parse().unwrap();
        assert_eq!(a.prefix, Some(64));
        assert_eq!(a.to_string(), "fd00::5/64");
        for bad in [
            "10.1.0.5/33",
            "fd00::5/129",
            "10.1.0",
            "x",
            "10.1.0.5/",
            "/24",
        ] {
            let e = bad.parse::<RequestedAddr>().unwrap_err();
            assert!(e.contains(bad), "{e}");
        }
        let v: RequestedAddr = serde_json::from_str("\"10.1.0.5/24\"").unwrap();
        assert_eq!(serde_json::to_string(&v).unwrap(), "\"10.1.0.5/24\"");
    }

    #[test]
    fn macs_parse_and_must_be_unicast() {
        let m: MacAddr = "02:42:AC:11:00:02".parse().unwrap();
        assert_eq!(m.to_string(), "02:42:ac:11:00:02");
        assert_eq!(serde_json::to_string(&m).unwrap(), "\"02:42:ac:11:00:02\"");
        for bad in [
            "02:42:ac:11:00",
            "02:42:ac:11:00:02:03",
            "0242ac110002",
            "02-42-ac-11-00-02",
            "zz:42:ac:11:00:02",
            "2:42:ac:11:00:02",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
        let e = "01:00:5e:00:00:01".parse::<MacAddr>().unwrap_err();
        assert!(e.contains("multicast"), "{e}");
        assert!("00:00:00:00:00:00".parse::<MacAddr>().is_err());
    }

    #[test]
    fn enums_parse() {
        assert_eq!("UDP".parse::<Proto>().unwrap(), Proto::Udp);
        assert!("icmp".parse::<Proto>().is_err());
        assert_eq!(
            "routed".parse::<GatewayMode>().unwrap(),
            GatewayMode::Routed
        );
        assert!("bogus".parse::<GatewayMode>().is_err());
    }

    #[test]
    fn port_runs_round_trip_and_old_lists_still_load() {
        let tcp = |h: u16, c: u16| PortMapping {
            host_port: h,
            container_port: c,
            protocol: Proto::Tcp,
            host_ip: None,
        };
        let mut ep = Endpoint {
            network: "a".into(),
            container_id: "c1".into(),
            ifname: "eth0".into(),
            netns: "/run/netns/x".into(),
            host_veth: host_veth_name("c1", "eth0"),
            addr4: None,
            addr6: None,
            ports: (20000..30000).map(|p| tcp(p, p)).collect(),
            mac: None,
            created: 0,
        };
        // A translated run, a lone mapping, a run ending at 65535, and UDP next to TCP.
        ep.ports.extend((8080..8083).map(|p| tcp(p, p - 8000)));
        ep.ports.push(tcp(9000, 9000));
        ep.ports.extend((65534..=65535).map(|p| tcp(p, p)));
        ep.ports.push(PortMapping {
            protocol: Proto::Udp,
            ..tcp(65535, 65535)
        });
        let text = serde_json::to_string(&ep).unwrap();
        assert!(text.len() < 600, "{} bytes: {text}", text.len());
        assert!(
            text.contains(
                r#"{"host_port":20000,"container_port":20000,"protocol":"tcp","count":10000}"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"{"host_port":8080,"container_port":80,"protocol":"tcp","count":3}"#),
            "{text}"
        );
        // A lone mapping is written as it always was.
        assert!(
            text.contains(r#"{"host_port":9000,"container_port":9000,"protocol":"tcp"},"#),
            "{text}"
        );
        let back: Endpoint = serde_json::from_str(&text).unwrap();
        assert_eq!(back, ep);

        // The one-entry-per-port form (every file and request before runs) loads as it did.
        let old = r#"{"network":"a","container_id":"c1","ifname":"eth0","netns":"/run/netns/x",
            "host_veth":"vx","ports":[{"host_port":8080,"container_port":80,"protocol":"tcp"},
            {"host_port":8081,"container_port":81,"protocol":"tcp"}],"created":0}"#;
        let old: Endpoint = serde_json::from_str(old).unwrap();
        assert_eq!(old.ports, vec![tcp(8080, 80), tcp(8081, 81)]);

        // Runs past the last port, and empty runs, are refused rather than cut short.
        for bad in [
            r#"{"host_port":65535,"container_port":1,"protocol":"tcp","count":2}"#,
            r#"{"host_port":1,"container_port":65535,"protocol":"tcp","count":2}"#,
            r#"{"host_port":1,"container_port":1,"protocol":"tcp","count":0}"#,
        ] {
            let text = format!(
                r#"{{"network":"a","container_id":"c1","ifname":"eth0","netns":"n","host_veth":"v","ports":[{bad}],"created":0}}"#
            );
            let err = serde_json::from_str::<Endpoint>(&text).unwrap_err();
            assert!(err.to_string().contains("port run"), "{err}");
        }
    }
}
