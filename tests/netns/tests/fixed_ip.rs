//! Fixed addresses and MACs, as Docker's `--ip/--ip6/--mac-address` and Podman's `--ip` ask
//! for them: the `ips` and `mac` capabilities and CNI_ARGS `IP=`/`MAC=`. Proven with packets
//! to the fixed address; every refusal leaves no veth, no endpoint and the table unchanged.
//! Needs the product binaries (`cargo build --workspace --bins`).

use std::net::IpAddr;

use serde_json::{json, Value};

use netd_netns_tests::*;

const NET: &str = "fix";
const SUBNET4: &str = "10.90.1.0/24";
const SUBNET6: &str = "fd00:90:1::/64";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn world() -> World {
    let mut w = World::new();
    w.start_netd();
    w.create_network(NET, &["--subnet", SUBNET4, "--subnet", SUBNET6]);
    w
}

/// ADD with `CNI_ARGS` (and optional runtimeConfig), as a runtime following the Kubernetes
/// convention runs it.
fn add_with_args(w: &World, c: &Netns, cni_args: &str, rc: Option<Value>) -> CniOutput {
    let mut conf = w.cni_conf(NET);
    if let Some(rc) = rc {
        conf["runtimeConfig"] = rc;
    }
    let mut env = w.cni_env("ADD", c, "eth0");
    env.push(("CNI_ARGS".into(), cni_args.into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    w.cni_raw(&env, conf.to_string().as_bytes())
}

/// What a refused ADD must leave untouched.
struct Untouched {
    table: Option<String>,
    endpoints: Value,
    host_links: Vec<String>,
}

impl Untouched {
    fn take(w: &World) -> Untouched {
        let mut host_links = w.host.link_names();
        host_links.sort();
        Untouched {
            table: w.host.nft_table("inet", "netd"),
            endpoints: w.netctl_json(&["endpoint", "ls"]),
            host_links,
        }
    }

    fn assert_same(&self, w: &World, c: &Netns, what: &str) {
        let now = Untouched::take(w);
        assert_eq!(now.table, self.table, "{what}: netd's table changed");
        assert_eq!(now.endpoints, self.endpoints, "{what}: endpoints changed");
        assert_eq!(
            now.host_links, self.host_links,
            "{what}: host links changed"
        );
        let veth = netd::model::host_veth_name(c.label(), "eth0");
        assert!(!w.host.has_link(&veth), "{what}: {veth} left behind");
        assert!(!c.has_link("eth0"), "{what}: eth0 left in the container");
    }
}

#[test]
fn fixed_addresses_and_mac_through_the_capabilities() {
    let w = world();
    let conf = w.cni_conf(NET);
    assert_eq!(
        conf["capabilities"],
        json!({"portMappings": true, "ips": true, "mac": true})
    );

    let c1 = w.container("fixed1");
    let r = w.cni(
        "ADD",
        &c1,
        "eth0",
        NET,
        Some(json!({"ips": ["10.90.1.50/24", "fd00:90:1::50"], "mac": "02:42:0a:5a:01:32"})),
    );
    assert!(r.success(), "{r}");
    assert_eq!(r.ips(), vec![ip("10.90.1.50"), ip("fd00:90:1::50")], "{r}");
    let result = r.json.clone().unwrap();
    assert_eq!(result["interfaces"][1]["mac"], "02:42:0a:5a:01:32", "{r}");
    let link = c1.ip_json(&["link", "show", "dev", "eth0"]);
    assert_eq!(
        link[0]["address"], "02:42:0a:5a:01:32",
        "MAC inside the container"
    );
    let have = c1.addrs_of("eth0");
    assert!(
        have.contains(&ip("10.90.1.50")) && have.contains(&ip("fd00:90:1::50")),
        "{have:?}"
    );

    // A neighbour with an allocated address reaches c1 at its fixed addresses, and the
    // allocator went around them.
    let c2 = w.container("fixed2");
    let r2 = w.cni_add(&c2, NET);
    assert_eq!(r2.ips(), vec![ip("10.90.1.2"), ip("fd00:90:1::2")], "{r2}");
    let srv = TcpServer::start(&c1);
    let seen = assert_tcp_ok(&c2, srv.addr(ip("10.90.1.50")));
    assert_eq!(seen.ip(), ip("10.90.1.2"));
    assert_tcp_ok(&c2, srv.addr(ip("fd00:90:1::50")));
    assert_ping_ok(&c2, ip("10.90.1.50"));
    // Negative control: nobody holds 10.90.1.51.
    assert_tcp_blocked(&c2, srv.addr(ip("10.90.1.51")));
    // The neighbour learnt c1's fixed MAC with the address.
    let neigh = c2.ip(&["neigh", "show", "10.90.1.50"]);
    assert!(neigh.contains("02:42:0a:5a:01:32"), "{neigh}");

    // CHECK passes on the fixed attachment.
    let chk = w.cni_with_prev("CHECK", &c1, "eth0", NET, None, Some(result.clone()));
    assert!(chk.success(), "{chk}");
    // ... and fails once the interface no longer has the MAC asked for.
    c1.ip(&["link", "set", "eth0", "address", "02:42:0a:5a:01:33"]);
    let chk = w.cni_with_prev("CHECK", &c1, "eth0", NET, None, Some(result.clone()));
    assert_eq!(chk.error_code(), Some(103), "{chk}");
    assert!(
        chk.stdout.contains("not the 02:42:0a:5a:01:32 asked for"),
        "{chk}"
    );
    c1.ip(&["link", "set", "eth0", "address", "02:42:0a:5a:01:32"]);
    let chk = w.cni_with_prev("CHECK", &c1, "eth0", NET, None, Some(result));
    assert!(chk.success(), "{chk}");

    // A restart keeps the fixed addresses held: nobody else gets them.
    let mut w = w;
    w.restart_netd(libc::SIGTERM);
    let c3 = w.container("fixed3");
    let before = Untouched::take(&w);
    let r3 = w.cni(
        "ADD",
        &c3,
        "eth0",
        NET,
        Some(json!({"ips": ["10.90.1.50"]})),
    );
    assert!(!r3.success(), "{r3}");
    assert_eq!(r3.error_code(), Some(100), "{r3}");
    assert!(r3.stdout.contains("taken by container fixed1"), "{r3}");
    before.assert_same(&w, &c3, "taken after restart");
    let r3 = w.cni_add(&c3, NET);
    assert!(!r3.ips().contains(&ip("10.90.1.50")), "{r3}");
    assert_tcp_ok(&c3, srv.addr(ip("10.90.1.50")));

    w.cni_del(&c1, NET);
    w.cni_del(&c2, NET);
    w.cni_del(&c3, NET);
}

#[test]
fn fixed_address_and_mac_through_cni_args() {
    let w = world();
    let c1 = w.container("args1");
    let r = add_with_args(
        &w,
        &c1,
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;IP=10.90.1.60;MAC=02:42:0a:5a:01:3c",
        None,
    );
    assert!(r.success(), "{r}");
    assert_eq!(r.ip(), ip("10.90.1.60"), "{r}");
    let link = c1.ip_json(&["link", "show", "dev", "eth0"]);
    assert_eq!(link[0]["address"], "02:42:0a:5a:01:3c");
    let c2 = w.container("args2");
    w.cni_add(&c2, NET);
    let srv = TcpServer::start(&c1);
    assert_tcp_ok(&c2, srv.addr(ip("10.90.1.60")));
    assert_tcp_blocked(&c2, srv.addr(ip("10.90.1.61")));

    // Without IgnoreUnknown an unknown key is an error, and nothing is made.
    let c3 = w.container("args3");
    let before = Untouched::take(&w);
    let r = add_with_args(&w, &c3, "K8S_POD_NAME=web;IP=10.90.1.70", None);
    assert_eq!(r.error_code(), Some(4), "{r}");
    assert!(r.stdout.contains("K8S_POD_NAME"), "{r}");
    before.assert_same(&w, &c3, "unknown CNI_ARGS key");
    // The capability and CNI_ARGS disagreeing is refused too.
    let r = add_with_args(
        &w,
        &c3,
        "IP=10.90.1.70",
        Some(json!({"ips": ["10.90.1.71"]})),
    );
    assert_eq!(r.error_code(), Some(7), "{r}");
    before.assert_same(&w, &c3, "contradicting addresses");

    w.cni_del(&c1, NET);
    w.cni_del(&c2, NET);
}

#[test]
fn refused_fixed_addresses_leave_nothing_behind() {
    let w = world();
    let holder = w.container("holder");
    let r = w.cni(
        "ADD",
        &holder,
        "eth0",
        NET,
        Some(json!({"ips": ["10.90.1.80"]})),
    );
    assert!(r.success(), "{r}");

    let c = w.container("refused");
    let before = Untouched::take(&w);
    let cases: &[(Value, u64, &str)] = &[
        (
            json!({"ips": ["10.90.1.80"]}),
            100,
            "10.90.1.80 is taken by container holder eth0",
        ),
        (
            json!({"ips": ["10.91.0.5"]}),
            7,
            "outside the network's subnet 10.90.1.0/24",
        ),
        (
            json!({"ips": ["10.90.1.1"]}),
            7,
            "is the gateway of 10.90.1.0/24",
        ),
        (
            json!({"ips": ["10.90.1.0"]}),
            7,
            "network address of 10.90.1.0/24",
        ),
        (
            json!({"ips": ["10.90.1.255"]}),
            7,
            "broadcast address of 10.90.1.0/24",
        ),
        (
            json!({"ips": ["fd00:90:1::1"]}),
            7,
            "is the gateway of fd00:90:1::/64",
        ),
        (json!({"ips": ["10.90.1.81/16"]}), 7, "prefix /16"),
        (
            json!({"ips": ["10.90.1.81", "10.90.1.82"]}),
            7,
            "two IPv4 addresses",
        ),
        (json!({"ips": ["10.90.1.300"]}), 7, "runtimeConfig.ips[0]"),
        (json!({"mac": "01:00:5e:00:00:01"}), 7, "multicast"),
    ];
    for (rc, code, text) in cases {
        let r = w.cni("ADD", &c, "eth0", NET, Some(rc.clone()));
        assert!(!r.success(), "{rc}: {r}");
        assert_eq!(r.error_code(), Some(*code), "{rc}: {r}");
        assert!(r.stdout.contains(text), "{rc}: want {text:?}: {r}");
        before.assert_same(&w, &c, &rc.to_string());
    }
    // The same request through the API (what netctl and other clients see).
    let req = json!({"network": NET, "container_id": "refused", "ifname": "eth0",
                     "netns": c.path(), "ips": ["10.90.1.80"]})
    .to_string();
    let api = post(&w, "/v1/endpoints", &req);
    let body: Value = serde_json::from_str(&api).unwrap_or_else(|e| panic!("{e}: {api}"));
    assert_eq!(body["error"]["kind"], "conflict", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("taken by container holder"),
        "{body}"
    );
    before.assert_same(&w, &c, "API");

    // Positive control: a free address in the same container works.
    let r = w.cni("ADD", &c, "eth0", NET, Some(json!({"ips": ["10.90.1.81"]})));
    assert!(r.success(), "{r}");
    let srv = TcpServer::start(&c);
    assert_tcp_ok(&holder, srv.addr(ip("10.90.1.81")));
    w.cni_del(&c, NET);
    w.cni_del(&holder, NET);
}

/// One HTTP request on netd's socket, as any API client sends it; the body of the answer.
fn post(w: &World, path: &str, body: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(w.socket()).expect("connect to netd");
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: netd\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("read the answer");
    match answer.split_once("\r\n\r\n") {
        Some((_, body)) => body.to_string(),
        None => panic!("not an HTTP answer: {answer}"),
    }
}
