//! Runs the built plugin against a stand-in netd on a Unix socket, checking what the plugin
//! asks netd and how it maps the answers. No root, no namespace: every case ends before a
//! link would be created.

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;

use netd_api::http;
use serde_json::{json, Value};

type Handler = dyn Fn(&str, &str, &Value) -> (u16, Value) + Send + Sync;

/// A netd stand-in: answers each request with `handler` and records (method, path, body).
struct FakeNetd {
    dir: PathBuf,
    socket: PathBuf,
    seen: Arc<Mutex<Vec<(String, String, Value)>>>,
}

impl FakeNetd {
    fn start(tag: &str, handler: Box<Handler>) -> FakeNetd {
        let dir = std::env::temp_dir().join(format!("netd-cni-fake-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("netd.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let (head, off) = loop {
                    let n = conn.read(&mut chunk).unwrap();
                    assert!(n > 0, "client closed early");
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(h) = http::parse_head(&buf, 1 << 20).unwrap() {
                        break h;
                    }
                };
                while buf.len() < off + head.content_length {
                    let n = conn.read(&mut chunk).unwrap();
                    buf.extend_from_slice(&chunk[..n]);
                }
                let body: Value = if head.content_length == 0 {
                    Value::Null
                } else {
                    serde_json::from_slice(&buf[off..]).unwrap()
                };
                let (method, path) = (head.first[0].clone(), head.first[1].clone());
                let (status, answer) = handler(&method, &path, &body);
                log.lock().unwrap().push((method, path, body));
                let bytes = serde_json::to_vec(&answer).unwrap();
                conn.write_all(&http::response(status, &bytes)).unwrap();
            }
        });
        FakeNetd { dir, socket, seen }
    }

    fn seen(&self) -> Vec<(String, String, Value)> {
        self.seen.lock().unwrap().clone()
    }

    fn requests(&self) -> Vec<String> {
        self.seen()
            .into_iter()
            .map(|(m, p, _)| format!("{m} {p}"))
            .collect()
    }
}

impl Drop for FakeNetd {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn api_error(kind: &str, message: &str) -> Value {
    json!({"error": {"kind": kind, "message": message}})
}

fn network(subnet4: Option<&str>) -> Value {
    let mut n = json!({
        "name": "web", "bridge": "nd-web", "gateway4": "10.88.0.1",
        "internal": false, "icc": true, "gateway_mode4": "nat", "gateway_mode6": "nat",
        "mtu": 1500, "created": 0
    });
    if let Some(s) = subnet4 {
        n["subnet4"] = json!(s);
    }
    n
}

fn endpoint(cid: &str) -> Value {
    json!({
        "network": "web", "container_id": cid, "ifname": "eth0", "netns": "/proc/self/ns/net",
        "host_veth": netd_core::model::host_veth_name(cid, "eth0"), "addr4": "10.88.0.5", "created": 0
    })
}

struct Outcome {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Outcome {
    fn error(&self, code: u64) -> Value {
        assert!(!self.ok, "expected failure, stdout {:?}", self.stdout);
        let v: Value = serde_json::from_str(&self.stdout).unwrap();
        assert_eq!(v["code"], code, "{v}; stderr {}", self.stderr);
        v
    }
}

fn plugin(command: &str, netns: &str, conf: &Value) -> Outcome {
    let mut child = Command::new(env!("CARGO_BIN_EXE_netd-cni"))
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", "c0ffee")
        .env("CNI_IFNAME", "eth0")
        .env("CNI_NETNS", netns)
        .env("CNI_PATH", "/opt/cni/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    Outcome {
        ok: out.status.success(),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

fn conf(netd: &FakeNetd, extra: Value) -> Value {
    let mut v = json!({
        "cniVersion": "1.1.0", "name": "web", "type": "netd-cni", "socket": netd.socket
    });
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    v
}

const DETACH: &str = "DELETE /v1/endpoints/web/c0ffee/eth0";
/// DEL asks netd to remove the links too ([`netd_api::Client::release`]).
const RELEASE: &str = "DELETE /v1/endpoints/web/c0ffee/eth0?links=remove";

#[test]
fn status_with_netd_prints_nothing() {
    let netd = FakeNetd::start(
        "status",
        Box::new(|_, _, _| {
            (
                200,
                json!({"version": "0.1.0", "uptime_secs": 3, "table": "netd",
                       "networks": 1, "endpoints": 0, "published_ports": 0}),
            )
        }),
    );
    let out = plugin("STATUS", "", &conf(&netd, json!({})));
    assert!(out.ok, "{} {}", out.stdout, out.stderr);
    assert_eq!(out.stdout, "");
    assert_eq!(netd.requests(), ["GET /v1/status"]);
}

#[test]
fn add_sends_ports_with_host_ip_and_maps_a_conflict_to_100() {
    let netd = FakeNetd::start(
        "conflict",
        Box::new(|_, _, _| {
            (
                409,
                api_error("conflict", "port 8080/tcp is taken by c1/eth0"),
            )
        }),
    );
    let c = conf(
        &netd,
        json!({"runtimeConfig": {"portMappings": [
            {"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": "127.0.0.1"},
            {"hostPort": 53, "containerPort": 53, "protocol": "udp"}
        ]}}),
    );
    let v = plugin("ADD", "/proc/self/ns/net", &c).error(100);
    assert_eq!(
        v["msg"],
        "rejected by netd: port 8080/tcp is taken by c1/eth0"
    );
    let seen = netd.seen();
    assert_eq!(seen.len(), 1, "no detach after a refused attach: {seen:?}");
    let (method, path, body) = &seen[0];
    assert_eq!(
        (method.as_str(), path.as_str()),
        ("POST", "/v1/endpoints?ports=omit")
    );
    assert_eq!(
        body,
        &json!({
            "network": "web", "container_id": "c0ffee", "ifname": "eth0",
            "netns": "/proc/self/ns/net",
            "port_mappings": [
                {"host_port": 8080, "container_port": 80, "protocol": "tcp", "host_ip": "127.0.0.1"},
                {"host_port": 53, "container_port": 53, "protocol": "udp"}
            ]
        })
    );
}

#[test]
fn add_to_an_unknown_network_is_code_7() {
    let netd = FakeNetd::start(
        "unknown",
        Box::new(|_, _, _| (404, api_error("not_found", "no network foo"))),
    );
    let v = plugin(
        "ADD",
        "/proc/self/ns/net",
        &conf(&netd, json!({"network": "foo"})),
    )
    .error(7);
    let msg = v["msg"].as_str().unwrap();
    assert!(
        msg.starts_with("network foo is not known to netd: "),
        "{msg}"
    );
    assert!(
        msg.contains("netctl network create foo") && msg.contains("\"subnets\""),
        "the fix is named: {msg}"
    );
}

#[test]
fn add_rolls_back_with_a_detach_when_netd_answers_nonsense() {
    // An address without a subnet: the plugin must give the endpoint back before failing.
    let netd = FakeNetd::start(
        "rollback",
        Box::new(|method, _, _| match method {
            "POST" => (
                200,
                json!({"network": network(None), "endpoint": endpoint("c0ffee")}),
            ),
            _ => (200, json!({"released": true})),
        }),
    );
    let v = plugin("ADD", "/proc/self/ns/net", &conf(&netd, json!({}))).error(101);
    assert!(v["msg"].as_str().unwrap().contains("inconsistent"), "{v}");
    assert_eq!(netd.requests(), ["POST /v1/endpoints?ports=omit", DETACH]);
}

#[test]
fn del_detaches_and_tolerates_an_unknown_endpoint() {
    let netd = FakeNetd::start(
        "del",
        Box::new(|_, _, _| (404, api_error("not_found", "no such endpoint"))),
    );
    for _ in 0..2 {
        let out = plugin("DEL", "/nonexistent/netns", &conf(&netd, json!({})));
        assert!(out.ok, "{} {}", out.stdout, out.stderr);
        assert_eq!(out.stdout, "");
    }
    assert_eq!(netd.requests(), [RELEASE, RELEASE]);
}

#[test]
fn del_reports_a_netd_failure() {
    let netd = FakeNetd::start(
        "delfail",
        Box::new(|_, _, _| (500, api_error("internal", "nft transaction failed"))),
    );
    let v = plugin("DEL", "", &conf(&netd, json!({}))).error(101);
    assert!(
        v["msg"]
            .as_str()
            .unwrap()
            .contains("nft transaction failed"),
        "{v}"
    );
}

#[test]
fn gc_sends_the_valid_list() {
    let netd = FakeNetd::start(
        "gc",
        Box::new(|_, _, _| (200, json!({"released": [endpoint("dead0")]}))),
    );
    let c = conf(
        &netd,
        json!({
            "cni.dev/valid-attachments": [{"containerID": "c0ffee", "ifname": "eth0"}],
            "cni.dev/attachments": [{"containerID": "c0ffee", "ifname": "eth0"}]
        }),
    );
    let out = plugin("GC", "", &c);
    assert!(out.ok, "{} {}", out.stdout, out.stderr);
    assert_eq!(out.stdout, "");
    let seen = netd.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].1, "/v1/gc");
    assert_eq!(
        seen[0].2,
        json!({"network": "web", "valid": [{"container_id": "c0ffee", "ifname": "eth0"}]})
    );
}

#[test]
fn check_names_a_missing_endpoint() {
    let netd = FakeNetd::start(
        "check",
        Box::new(|_, _, _| (404, api_error("not_found", "no such endpoint"))),
    );
    let prev = json!({"cniVersion": "1.1.0", "ips": [{"address": "10.88.0.5/16"}]});
    let v = plugin(
        "CHECK",
        "/proc/self/ns/net",
        &conf(&netd, json!({"prevResult": prev})),
    )
    .error(103);
    assert!(
        v["msg"]
            .as_str()
            .unwrap()
            .contains("netd holds no endpoint"),
        "{v}"
    );
    assert_eq!(netd.requests(), ["GET /v1/endpoints/web/c0ffee/eth0"]);
}
