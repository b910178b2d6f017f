//! containerd 1.6 on netd networks, both ways it calls CNI (issue #11): `ctr run --cni`
//! (go-cni, in the ctr process) and the CRI plugin as kubelet drives it (a CRI client over
//! containerd's socket). containerd runs from a private config.toml inside the test's host
//! netns and a private mount namespace (`runtime::containerd`); the conflists are exactly
//! what `netctl network create` writes.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use k8s_cri::v1::Protocol;
use netd_netns_tests::image::{PAUSE_BANNER, PAUSE_PORT};
use netd_netns_tests::runtime::containerd::{Containerd, CTR_NAMESPACE};
use netd_netns_tests::runtime::cri::Cri;
use netd_netns_tests::runtime::{assert_banner, assert_banner_blocked, require};
use netd_netns_tests::world::{EXT_V4, HOST_EXT_V4};
use netd_netns_tests::*;

/// How long a container's server may take to listen after the runtime says it runs.
const START: Duration = Duration::from_secs(10);

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn sa(addr: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(addr, port)
}

fn setup() -> Option<(World, Containerd)> {
    if !require(&["containerd", "ctr", "runc", "nsenter", "unshare", "busybox"]) {
        return None;
    }
    let mut w = World::new();
    let cd = Containerd::new(&mut w);
    Some((w, cd))
}

/// netd's endpoints as (container ID, IPv4).
fn endpoints(w: &World) -> Vec<(String, String)> {
    w.netctl_json(&["endpoint", "ls"])
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                e["container_id"].as_str().unwrap_or_default().to_string(),
                e["addr4"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// `ctr run --rm --cni`: ctr calls ADD before the task starts and DEL after it exits. The
/// container sees its netd address and reaches the external host (masqueraded); afterwards
/// netd has no endpoint and the host veth is gone. ctr 1.6 has no port publishing flag, so
/// the published-port tests are the CRI ones.
#[test]
fn ctr_run_cni_attaches_reaches_out_and_detaches() {
    let Some((w, cd)) = setup() else { return };
    // go-cni in ctr loads the first conflist of /etc/cni/net.d: make it the only one.
    w.create_network("web", &["--subnet", "10.89.70.0/24"]);
    // The command docs/guide.md shows.
    let script = format!("ip -4 -o addr show dev eth0; ping -c1 -W2 {EXT_V4}");
    let out = cd.ctr(
        CTR_NAMESPACE,
        &[
            "run",
            "--rm",
            "--cni",
            &cd.busybox.reference,
            "t1",
            "sh",
            "-c",
            &script,
        ],
    );
    assert!(out.success(), "ctr run --cni: {out}\n{}", w.netd_log());
    assert!(
        out.stdout.contains("inet 10.89.70."),
        "the container should have an address of web: {out}"
    );
    assert!(
        out.stdout.contains("1 packets received"),
        "ping out should have been answered: {out}"
    );
    // The external host saw the host's uplink address: masqueraded.
    let ext = TcpServer::start(&w.external);
    let script = format!("nc {EXT_V4} {} </dev/null", ext.port());
    let out = cd.ctr(
        CTR_NAMESPACE,
        &[
            "run",
            "--rm",
            "--cni",
            &cd.busybox.reference,
            "t1b",
            "sh",
            "-c",
            &script,
        ],
    );
    assert!(
        out.success() && out.stdout.starts_with(&format!("{HOST_EXT_V4}:")),
        "the external server should have seen {HOST_EXT_V4}: {out}"
    );
    // CNI_CONTAINERID is NAMESPACE-ID for ctr.
    let cid = format!("{CTR_NAMESPACE}-t1");
    assert!(
        w.netd_log()
            .contains(&format!("endpoint detached endpoint=web/{cid}/eth0")),
        "ctr --rm should have run CNI DEL for {cid}:\n{}",
        w.netd_log()
    );
    assert!(
        endpoints(&w).is_empty(),
        "endpoints left: {:?}",
        endpoints(&w)
    );
    let veth = netd::model::host_veth_name(&cid, "eth0");
    assert!(
        w.host.wait_link_gone(&veth, Duration::from_secs(5)),
        "host veth {veth} left after ctr run --rm"
    );
}

/// A detached `ctr run -d --cni` container serves on the address netd lists for it.
#[test]
fn ctr_run_detached_container_is_reachable_on_its_address() {
    let Some((w, cd)) = setup() else { return };
    w.create_network("web", &["--subnet", "10.89.71.0/24"]);
    cd.ctr_ok(
        CTR_NAMESPACE,
        &[
            "run",
            "-d",
            "--cni",
            &cd.busybox.reference,
            "t2",
            "nc",
            "-ll",
            "-p",
            "80",
            "-e",
            "echo",
            "t2",
        ],
    );
    let cid = format!("{CTR_NAMESPACE}-t2");
    let eps = endpoints(&w);
    let addr = eps
        .iter()
        .find(|(c, _)| c == &cid)
        .map(|(_, a)| a.split('/').next().unwrap_or_default().to_string())
        .unwrap_or_else(|| panic!("{cid} not among netd's endpoints: {eps:?}"));
    let addr = ip(&addr);
    assert_banner(&w.host, sa(addr, 80), "t2", START);
    assert_banner_blocked(&w.host, sa(addr, 81));
    // ctr 1.6 never runs CNI DEL for a detached container (`task rm` and `container rm`
    // do not); netd releases such an endpoint at its next periodic check, once the
    // /proc/PID/ns/net path ctr gave it is gone. The sandbox's drop ends the task.
}

/// containerd 1.6 (libcni 1.1) refuses a 1.1.0 result: the error ctr prints.
#[test]
fn ctr_accepts_cni_1_0_0_and_refuses_1_1_0() {
    let Some((w, cd)) = setup() else { return };
    w.create_network("v110", &["--subnet", "10.89.72.0/24"]);
    let p = w.conflist_path("v110");
    let text = std::fs::read_to_string(&p).expect("read conflist");
    assert!(text.contains("\"cniVersion\": \"1.0.0\""), "{text}");
    std::fs::write(&p, text.replace("\"1.0.0\"", "\"1.1.0\"")).expect("write conflist");
    let out = cd.ctr(
        CTR_NAMESPACE,
        &["run", "--rm", "--cni", &cd.busybox.reference, "t3", "true"],
    );
    assert!(
        !out.success(),
        "ctr run --cni on a 1.1.0 conflist should fail"
    );
    assert!(
        out.stderr.contains(
            r#"plugin type="netd-cni" failed (add): unsupported CNI result version "1.1.0""#
        ),
        "unexpected error: {out}"
    );
    // The plugin attached the container before ctr rejected its answer. With --rm ctr runs
    // DEL all the same; a detached (-d) run does not, and the endpoint stays (ctr 1.6 quirk
    // docs/guide.md describes).
    assert!(
        w.netd_log().contains(&format!(
            "endpoint attached endpoint=v110/{CTR_NAMESPACE}-t3/eth0"
        )),
        "netd should have attached t3 before ctr rejected the result"
    );
    assert!(endpoints(&w).is_empty(), "--rm left {:?}", endpoints(&w));
    let out = cd.ctr(
        CTR_NAMESPACE,
        &[
            "run",
            "-d",
            "--cni",
            &cd.busybox.reference,
            "t5",
            "sleep",
            "100",
        ],
    );
    assert!(
        !out.success() && out.stderr.contains("unsupported CNI result version"),
        "ctr run -d --cni on a 1.1.0 conflist: {out}"
    );
    let left = endpoints(&w);
    assert!(
        left.iter()
            .any(|(c, _)| c == &format!("{CTR_NAMESPACE}-t5")),
        "expected ctr 1.6 to leave the detached container's endpoint: {left:?}"
    );
    // Control: the conflist as netctl wrote it works.
    std::fs::write(&p, &text).expect("restore conflist");
    let out = cd.ctr(
        CTR_NAMESPACE,
        &["run", "--rm", "--cni", &cd.busybox.reference, "t4", "true"],
    );
    assert!(out.success(), "ctr run --cni with 1.0.0: {out}");
}

/// The CRI plugin as kubelet drives it: RunPodSandbox with a port mapping (it reaches the
/// plugin as the `portMappings` capability), the pod's IP from PodSandboxStatus, the
/// published port from outside, then StopPodSandbox + RemovePodSandbox (CNI DEL).
#[test]
fn cri_pod_sandbox_publishes_port_and_stop_removes_it() {
    let Some((w, cd)) = setup() else { return };
    w.create_network("pods", &["--subnet", "10.89.73.0/24"]);
    let mut cri = Cri::connect(cd.socket());
    let (name, version) = cri.version();
    assert_eq!(name, "containerd", "CRI runtime name");
    assert!(!version.is_empty());

    let id = run_pod_retrying(
        &mut cri,
        "web",
        &[
            (8080, PAUSE_PORT, Protocol::Tcp),
            (5353, 5353, Protocol::Udp),
        ],
    );
    let pod_ip = cri.pod_ip(&id);
    assert!(
        pod_ip.to_string().starts_with("10.89.73."),
        "pod IP {pod_ip} not in the pods network"
    );
    let eps = endpoints(&w);
    assert!(
        eps.iter()
            .any(|(c, a)| c == &id && a.starts_with(&pod_ip.to_string())),
        "netd should list sandbox {id} with {pod_ip}: {eps:?}"
    );

    let host = ip(HOST_EXT_V4);
    assert_banner(&w.external, sa(host, 8080), PAUSE_BANNER, START);
    assert_banner_blocked(&w.external, sa(host, 8081));
    assert_banner(&w.host, sa(pod_ip, PAUSE_PORT), PAUSE_BANNER, START);
    // UDP: a server in the pod's netns answers with the client address it saw (the
    // external host's own, not masqueraded).
    let pod_ns = cd
        .sandbox()
        .adopt_netns(&cri.pod_netns_path(&id), "web-pod");
    let udp = UdpServer::start_on_port(&pod_ns, 5353);
    let seen = assert_udp_ok(&w.external, sa(host, 5353));
    assert_eq!(
        seen.ip(),
        ip(EXT_V4),
        "UDP to the pod should keep the client address"
    );
    assert_udp_blocked(&w.external, sa(host, 5354));
    let veth = netd::model::host_veth_name(&id, "eth0");
    assert!(w.host.has_link(&veth), "pod's host veth {veth} missing");

    cri.stop_and_remove_pod(&id);
    drop(udp);
    assert_banner_blocked(&w.external, sa(host, 8080));
    assert_udp_blocked(&w.external, sa(host, 5353));
    assert!(
        w.host.wait_link_gone(&veth, Duration::from_secs(5)),
        "pod's host veth {veth} left after StopPodSandbox"
    );
    assert!(
        !endpoints(&w).iter().any(|(c, _)| c == &id),
        "sandbox {id} still an endpoint after StopPodSandbox"
    );
}

/// The CRI plugin of containerd 1.6 refuses a 1.1.0 result too, and cleans up after itself
/// (it runs DEL for the failed sandbox, so netd keeps no endpoint).
#[test]
fn cri_refuses_cni_1_1_0_results() {
    let Some((w, cd)) = setup() else { return };
    w.create_network("pods", &["--subnet", "10.89.75.0/24"]);
    let p = w.conflist_path("pods");
    let text = std::fs::read_to_string(&p).expect("read conflist");
    std::fs::write(&p, text.replace("\"1.0.0\"", "\"1.1.0\"")).expect("write conflist");
    let mut cri = Cri::connect(cd.socket());
    // The plugin reloads conf_dir on change: a sandbox made from the 1.0.0 file it may have
    // loaded first is removed and the call repeated.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let err = loop {
        match cri.run_pod("v110", &[]) {
            Ok(id) => cri.stop_and_remove_pod(&id),
            Err(e) if e.message().contains("unsupported CNI result version") => break e,
            Err(e) if e.message().contains("cni config not initialized") => {}
            Err(e) => panic!("unexpected RunPodSandbox error: {e}"),
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the CRI plugin never used the 1.1.0 conflist"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        err.message().contains(
            r#"plugin type="netd-cni" failed (add): unsupported CNI result version "1.1.0""#
        ),
        "{err}"
    );
    assert!(
        w.netd_log().contains("endpoint attached endpoint=pods/"),
        "netd should have attached the sandbox before containerd rejected the result"
    );
    assert!(
        endpoints(&w).is_empty(),
        "containerd should have run DEL for the failed sandbox: {:?}",
        endpoints(&w)
    );
    eprintln!(
        "containerd 1.6 CRI with cniVersion 1.1.0: {}",
        err.message()
    );
}

/// RunPodSandbox, retried while the CRI plugin has not yet loaded the conflist netctl just
/// wrote (it watches conf_dir; "cni config not initialized" until then).
fn run_pod_retrying(
    cri: &mut Cri,
    name: &str,
    ports: &[netd_netns_tests::runtime::cri::Port],
) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        match cri.run_pod(name, ports) {
            Ok(id) => return id,
            Err(e)
                if e.message().contains("cni config not initialized")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("RunPodSandbox {name}: {e}"),
        }
    }
}

/// A Kubernetes node without a manual step: kubelet sends the node's pod CIDR
/// (UpdateRuntimeConfig), containerd renders `deploy/netd.conflist.tmpl` from
/// `conf_template`, and the first pod's ADD makes netd create the network with that subnet.
#[test]
fn cri_pod_cidr_from_conf_template_creates_the_network() {
    if !require(&["containerd", "ctr", "runc", "nsenter", "unshare", "busybox"]) {
        return;
    }
    let tmpl_path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/netd.conflist.tmpl");
    let tmpl = std::fs::read_to_string(&tmpl_path)
        .unwrap_or_else(|e| panic!("{}: {e}", tmpl_path.display()));
    let mut w = World::new();
    // The template names the default socket; this netd listens in its temp dir.
    assert!(tmpl.contains("/run/netd/netd.sock"), "{tmpl}");
    let tmpl = tmpl.replace("/run/netd/netd.sock", &w.socket().display().to_string());
    let cd = Containerd::with_conf_template(&mut w, Some(&tmpl));
    assert!(
        w.netctl_json(&["network", "ls"])
            .as_array()
            .is_some_and(Vec::is_empty),
        "no network should exist before the first pod"
    );
    let mut cri = Cri::connect(cd.socket());
    cri.update_pod_cidr("10.89.74.0/24")
        .unwrap_or_else(|e| panic!("UpdateRuntimeConfig: {e}"));
    let id = run_pod_retrying(&mut cri, "tmpl", &[(8080, PAUSE_PORT, Protocol::Tcp)]);
    let pod_ip = cri.pod_ip(&id);
    assert!(
        pod_ip.to_string().starts_with("10.89.74."),
        "pod IP {pod_ip} not from the node's pod CIDR"
    );
    let nets = w.netctl_json(&["network", "ls"]);
    assert!(
        nets.to_string().contains("10.89.74.0/24"),
        "netd should have created the network with the pod CIDR: {nets}"
    );
    let host = ip(HOST_EXT_V4);
    assert_banner(&w.external, sa(host, 8080), PAUSE_BANNER, START);
    assert_banner_blocked(&w.external, sa(host, 8081));
    cri.stop_and_remove_pod(&id);
    assert_banner_blocked(&w.external, sa(host, 8080));
}
