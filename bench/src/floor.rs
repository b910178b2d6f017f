//! The kernel's share of one container's attach, measured without the plugin's exec, netd
//! or the disk: the same `netd-link` calls netd-cni makes for an ADD (the veth pair with its
//! peer born in the container's namespace, the host end made a marked, flagged and up port
//! of the network's bridge, the container end renamed, addressed, routed and up), done in
//! process on a bridge that already has N ports, then the pair deleted (untimed: netd's reaper
//! does that off the DEL's path). This is what any bridge-and-veth CNI plugin pays the kernel
//! per container; the exec floor (a `VERSION` call) is what any exec'd plugin pays to start.
//! Their sum at N is a floor under netd's ADD at N that no change to netd can go below.

use std::net::{IpAddr, Ipv4Addr};

use std::time::Instant;

use ipnet::IpNet;

use netd_link::{HostLinks, Route};
use netd_netns_tests::Netns;

/// `samples` timed link attaches in `host` on `bridge`, each into a fresh namespace (made
/// and removed outside the timing, as a runtime does), with the address `addr(i)` and a
/// default route through `gateway`. No packet is sent, so an address in use by an endpoint
/// would do no harm; the callers pick free ones anyway. Milliseconds.
pub fn link_floor(
    host: &Netns,
    bridge: &str,
    gateway: Ipv4Addr,
    addr: impl Fn(usize) -> IpNet + Sync,
    samples: usize,
) -> Vec<f64> {
    let containers: Vec<Netns> = (0..samples)
        .map(|i| Netns::new(&format!("benchkf{i:03}"), "c"))
        .collect();
    host.run_in(|| {
        let links = HostLinks::new().expect("netlink socket in the bench's host netns");
        let bridge_index = links
            .link_state(bridge)
            .expect("looking up the bench bridge")
            .unwrap_or_else(|| panic!("bridge {bridge} missing"))
            .index;
        let route = Route {
            dst: "0.0.0.0/0".parse().unwrap(),
            gateway: Some(IpAddr::V4(gateway)),
        };
        containers
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let veth = format!("vnbkf{i:03}");
                let tmp = format!("tmpbkf{i:03}");
                let ns = c.path().display().to_string();
                let addr = addr(i);
                let t0 = Instant::now();
                links
                    .create_veth(&veth, &tmp, &ns)
                    .expect("creating the veth pair");
                links
                    .attach_veth(&veth, bridge_index, 0, false, "bench")
                    .expect("attaching the host end");
                netd_link::configure_container(
                    &ns,
                    &tmp,
                    "eth0",
                    &[addr],
                    std::slice::from_ref(&route),
                    0,
                )
                .expect("configuring the container end");
                let ms = t0.elapsed().as_secs_f64() * 1e3;
                links.delete_link(&veth).expect("deleting the pair");
                ms
            })
            .collect()
    })
}
