//! Building ADD's result from netd's attachment: the addresses and routes the container gets,
//! and the CNI result that reports them, appended to a chained plugin's prevResult.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde_json::Map;

use crate::links::{ContainerIface, Route as LinkRoute};
use crate::types::{CniResult, CniVersion, Dns, Interface, IpConfig, Route};
use netd_api::Attachment;

/// One address the container gets, with its gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addressing {
    pub addr: IpNet,
    pub gateway: Option<IpAddr>,
}

/// The container's addresses with the subnets' prefix lengths; an error when netd handed out
/// an address in a family the network has no subnet for.
pub fn addressing(att: &Attachment) -> Result<Vec<Addressing>, String> {
    let (net, ep) = (&att.network, &att.endpoint);
    let mut v = Vec::new();
    if let Some(a) = ep.addr4 {
        let s = net
            .subnet4
            .ok_or_else(|| format!("netd gave {a} but network {} has no IPv4 subnet", net.name))?;
        v.push(Addressing {
            addr: IpNet::V4(Ipv4Net::new(a, s.prefix_len()).map_err(|e| e.to_string())?),
            gateway: net.gateway4.map(IpAddr::V4),
        });
    }
    if let Some(a) = ep.addr6 {
        let s = net
            .subnet6
            .ok_or_else(|| format!("netd gave {a} but network {} has no IPv6 subnet", net.name))?;
        v.push(Addressing {
            addr: IpNet::V6(Ipv6Net::new(a, s.prefix_len()).map_err(|e| e.to_string())?),
            gateway: net.gateway6.map(IpAddr::V6),
        });
    }
    Ok(v)
}

/// A default route per family through the bridge's gateway; none on an internal network, whose
/// containers must only reach each other (the connected subnet route does that).
pub fn routes(internal: bool, addressing: &[Addressing]) -> Vec<LinkRoute> {
    if internal {
        return Vec::new();
    }
    addressing
        .iter()
        .filter_map(|a| {
            let gw = a.gateway?;
            let dst = match gw {
                IpAddr::V4(_) => IpNet::V4(Ipv4Net::new(Ipv4Addr::UNSPECIFIED, 0).ok()?),
                IpAddr::V6(_) => IpNet::V6(Ipv6Net::new(Ipv6Addr::UNSPECIFIED, 0).ok()?),
            };
            Some(LinkRoute {
                dst,
                gateway: Some(gw),
            })
        })
        .collect()
}

pub struct AddOutcome<'a> {
    pub attachment: &'a Attachment,
    pub host_mac: Option<String>,
    pub container: &'a ContainerIface,
    pub netns: &'a Path,
    pub addressing: &'a [Addressing],
    pub routes: &'a [LinkRoute],
}

/// The result for `version`: prevResult (if chained) with our two interfaces, addresses and
/// routes appended. Our `ips[].interface` indices count prevResult's interfaces first.
pub fn add_result(
    version: CniVersion,
    prev: Option<CniResult>,
    dns: Option<&Dns>,
    out: &AddOutcome<'_>,
) -> CniResult {
    let mut r = prev.unwrap_or_default();
    let mtu = Some(out.attachment.network.mtu).filter(|m| *m != 0);
    let host_index = r.interfaces.len();
    r.interfaces.push(Interface {
        name: out.attachment.endpoint.host_veth.clone(),
        mac: out.host_mac.clone(),
        mtu,
        sandbox: None,
        extra: Map::new(),
    });
    r.interfaces.push(Interface {
        name: out.container.ifname.clone(),
        mac: Some(out.container.mac.clone()).filter(|m| !m.is_empty()),
        mtu,
        sandbox: Some(out.netns.display().to_string()),
        extra: Map::new(),
    });
    for a in out.addressing {
        r.ips.push(IpConfig {
            version: None,
            address: a.addr,
            gateway: a.gateway,
            interface: Some(host_index + 1),
            extra: Map::new(),
        });
    }
    for route in out.routes {
        r.routes.push(Route {
            dst: route.dst,
            gw: route.gateway,
            extra: Map::new(),
        });
    }
    // As the reference bridge plugin does: configured DNS is what the runtime should apply.
    if let Some(d) = dns.filter(|d| !d.is_empty()) {
        r.dns = d.clone();
    }
    r.shape_for(version);
    r
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use netd_core::model::{Endpoint, GatewayMode, Network};
    use serde_json::json;

    pub fn attachment(v4: bool, v6: bool, internal: bool) -> Attachment {
        Attachment {
            network: Network {
                name: "web".into(),
                bridge: "nd-web".into(),
                subnet4: v4.then(|| "10.88.0.0/16".parse().unwrap()),
                gateway4: v4.then(|| "10.88.0.1".parse().unwrap()),
                subnet6: v6.then(|| "fd00:88::/64".parse().unwrap()),
                gateway6: v6.then(|| "fd00:88::1".parse().unwrap()),
                internal,
                icc: true,
                gateway_mode4: GatewayMode::Nat,
                gateway_mode6: GatewayMode::Nat,
                mtu: 1500,
                cni_version: "1.0.0".into(),
                created: 0,
            },
            endpoint: Endpoint {
                network: "web".into(),
                container_id: "c1".into(),
                ifname: "eth0".into(),
                netns: "/run/netns/c1".into(),
                host_veth: netd_core::model::host_veth_name("c1", "eth0"),
                addr4: v4.then(|| "10.88.0.5".parse().unwrap()),
                addr6: v6.then(|| "fd00:88::5".parse().unwrap()),
                ports: vec![],
                mac: None,
                created: 0,
            },
        }
    }

    fn result_for(
        version: CniVersion,
        prev: Option<CniResult>,
        att: &Attachment,
    ) -> serde_json::Value {
        let addressing = addressing(att).unwrap();
        let routes = routes(att.network.internal, &addressing);
        let container = ContainerIface {
            ifname: "eth0".into(),
            mac: "02:00:00:00:00:02".into(),
            index: 2,
            mtu: 1500,
            up: true,
            addrs: addressing.iter().map(|a| a.addr).collect(),
            routes: routes.clone(),
        };
        let out = AddOutcome {
            attachment: att,
            host_mac: Some("02:00:00:00:00:01".into()),
            container: &container,
            netns: Path::new("/run/netns/c1"),
            addressing: &addressing,
            routes: &routes,
        };
        serde_json::to_value(add_result(version, prev, None, &out)).unwrap()
    }

    #[test]
    fn result_1x_dual_stack() {
        let att = attachment(true, true, false);
        let veth = att.endpoint.host_veth.clone();
        let v = result_for(CniVersion::V1_0_0, None, &att);
        assert_eq!(
            v,
            json!({
                "cniVersion": "1.0.0",
                "interfaces": [
                    {"name": veth, "mac": "02:00:00:00:00:01"},
                    {"name": "eth0", "mac": "02:00:00:00:00:02", "sandbox": "/run/netns/c1"}
                ],
                "ips": [
                    {"address": "10.88.0.5/16", "gateway": "10.88.0.1", "interface": 1},
                    {"address": "fd00:88::5/64", "gateway": "fd00:88::1", "interface": 1}
                ],
                "routes": [
                    {"dst": "0.0.0.0/0", "gw": "10.88.0.1"},
                    {"dst": "::/0", "gw": "fd00:88::1"}
                ],
                "dns": {}
            })
        );
        // 1.1.0 adds the interface MTU.
        let v = result_for(CniVersion::V1_1_0, None, &att);
        assert_eq!(v["cniVersion"], "1.1.0");
        assert_eq!(v["interfaces"][1]["mtu"], 1500);
    }

    #[test]
    fn result_0x_ips_carry_version() {
        let att = attachment(true, true, false);
        for version in [CniVersion::V0_3_0, CniVersion::V0_3_1, CniVersion::V0_4_0] {
            let v = result_for(version, None, &att);
            assert_eq!(v["cniVersion"], version.as_str());
            assert_eq!(v["ips"][0]["version"], "4");
            assert_eq!(v["ips"][1]["version"], "6");
            assert!(v["interfaces"][1].get("mtu").is_none());
        }
    }

    #[test]
    fn internal_network_gets_no_routes() {
        let att = attachment(true, false, true);
        let v = result_for(CniVersion::V1_0_0, None, &att);
        assert!(v.get("routes").is_none(), "{v}");
        assert_eq!(v["ips"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn prev_result_is_extended_and_indices_fixed() {
        let prev: CniResult = serde_json::from_value(json!({
            "cniVersion": "0.4.0",
            "interfaces": [
                {"name": "br0"},
                {"name": "veth1"},
                {"name": "net1", "sandbox": "/run/netns/c1"}
            ],
            "ips": [{"version": "4", "address": "192.168.1.5/24", "interface": 2}],
            "routes": [{"dst": "192.168.0.0/16"}],
            "dns": {"nameservers": ["192.168.1.1"]},
            "someKey": true
        }))
        .unwrap();
        let att = attachment(true, false, false);
        let v = result_for(CniVersion::V0_4_0, Some(prev), &att);
        let ifaces = v["interfaces"].as_array().unwrap();
        assert_eq!(ifaces.len(), 5);
        assert_eq!(ifaces[4]["name"], "eth0");
        let ips = v["ips"].as_array().unwrap();
        assert_eq!(ips[0]["interface"], 2);
        assert_eq!(ips[1]["address"], "10.88.0.5/16");
        assert_eq!(ips[1]["interface"], 4);
        assert_eq!(ips[1]["version"], "4");
        assert_eq!(v["routes"].as_array().unwrap().len(), 2);
        assert_eq!(v["dns"]["nameservers"][0], "192.168.1.1");
        assert_eq!(v["someKey"], true);
    }

    #[test]
    fn address_without_subnet_is_refused() {
        let mut att = attachment(true, false, false);
        att.network.subnet4 = None;
        assert!(addressing(&att).is_err());
    }
}
