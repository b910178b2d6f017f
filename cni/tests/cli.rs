//! Runs the built plugin the way a runtime does: CNI_* in the environment, the configuration on
//! stdin, JSON on stdout. Needs no root and touches no namespace: every case ends before a link
//! would be changed (netd is never running here).

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::{json, Value};

struct Outcome {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Outcome {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {:?}", self.stdout))
    }

    /// Asserts a CNI error object with exactly the spec's keys and returns it.
    fn error(&self, code: u64) -> Value {
        assert!(!self.ok, "expected failure, stdout {:?}", self.stdout);
        let v = self.json();
        let keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys, ["cniVersion", "code", "details", "msg"], "{v}");
        assert_eq!(v["code"], code, "{v}; stderr {}", self.stderr);
        assert!(v["msg"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        v
    }
}

fn plugin(env: &[(&str, &str)], stdin: &[u8]) -> Outcome {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_netd-cni"));
    cmd.env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn netd-cni");
    let mut input = child.stdin.take().unwrap();
    // The plugin may stop reading early (it bounds its input); a broken pipe is fine then.
    let _ = input.write_all(stdin);
    drop(input);
    let out = child.wait_with_output().unwrap();
    Outcome {
        ok: out.status.success(),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

/// A socket path under a directory that is never created, so nothing listens there.
fn dead_socket(tag: &str) -> PathBuf {
    std::env::temp_dir()
        .join(format!("netd-cni-test-{}-{tag}", std::process::id()))
        .join("netd.sock")
}

fn conf(version: &str, socket: &PathBuf, extra: Value) -> Vec<u8> {
    let mut v = json!({
        "cniVersion": version,
        "name": "web",
        "type": "netd-cni",
        "socket": socket,
    });
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    v.to_string().into_bytes()
}

const CONTAINER: [(&str, &str); 3] = [
    ("CNI_CONTAINERID", "0123456789abcdef"),
    ("CNI_IFNAME", "eth0"),
    ("CNI_PATH", "/opt/cni/bin"),
];

fn with(
    command: &'static str,
    more: &[(&'static str, &'static str)],
) -> Vec<(&'static str, &'static str)> {
    let mut v = vec![("CNI_COMMAND", command)];
    v.extend_from_slice(&CONTAINER);
    v.extend_from_slice(more);
    v
}

#[test]
fn version_without_input_and_echoing_the_request() {
    let out = plugin(&[("CNI_COMMAND", "VERSION")], b"");
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(
        out.json(),
        json!({
            "cniVersion": "1.1.0",
            "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
        })
    );
    let out = plugin(&[("CNI_COMMAND", "VERSION")], br#"{"cniVersion":"0.3.1"}"#);
    assert!(out.ok);
    assert_eq!(out.json()["cniVersion"], "0.3.1");
}

#[test]
fn malformed_json_is_code_6() {
    let out = plugin(
        &with("ADD", &[("CNI_NETNS", "/proc/self/ns/net")]),
        b"{\"cniVersion\": ",
    );
    let v = out.error(6);
    assert_eq!(v["cniVersion"], "1.1.0");
}

#[test]
fn oversized_input_is_refused_not_a_crash() {
    let big = vec![b' '; (8 << 20) + 10];
    let out = plugin(&with("DEL", &[]), &big);
    out.error(6);
}

#[test]
fn unsupported_version_is_code_1() {
    let sock = dead_socket("version");
    let out = plugin(
        &with("ADD", &[("CNI_NETNS", "/proc/self/ns/net")]),
        &conf("0.2.0", &sock, json!({})),
    );
    let v = out.error(1);
    assert_eq!(v["cniVersion"], "0.2.0");
    assert!(v["msg"].as_str().unwrap().contains("0.2.0"), "{v}");
}

#[test]
fn unknown_field_is_code_2_naming_it() {
    let sock = dead_socket("field");
    let out = plugin(
        &with("ADD", &[("CNI_NETNS", "/proc/self/ns/net")]),
        &conf("1.0.0", &sock, json!({"hairpinMode": true})),
    );
    let v = out.error(2);
    assert_eq!(v["cniVersion"], "1.0.0");
    assert!(v["msg"].as_str().unwrap().contains("hairpinMode"), "{v}");
}

#[test]
fn add_without_netns_is_code_4() {
    let sock = dead_socket("nonetns");
    let out = plugin(&with("ADD", &[]), &conf("1.1.0", &sock, json!({})));
    let v = out.error(4);
    assert!(v["msg"].as_str().unwrap().contains("CNI_NETNS"), "{v}");
}

#[test]
fn add_with_netns_that_is_not_one_is_code_4() {
    let sock = dead_socket("notns");
    let out = plugin(
        &with("ADD", &[("CNI_NETNS", "/proc/self/status")]),
        &conf("1.1.0", &sock, json!({})),
    );
    let v = out.error(4);
    assert!(
        v["details"]
            .as_str()
            .unwrap()
            .contains("not a network namespace"),
        "{v}"
    );
}

#[test]
fn add_without_daemon_is_code_11_naming_the_socket() {
    let sock = dead_socket("add");
    let out = plugin(
        &with("ADD", &[("CNI_NETNS", "/proc/self/ns/net")]),
        &conf(
            "1.0.0",
            &sock,
            json!({"runtimeConfig": {"portMappings": [
                {"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": "127.0.0.1"}
            ]}}),
        ),
    );
    let v = out.error(11);
    assert_eq!(v["cniVersion"], "1.0.0");
    let msg = v["msg"].as_str().unwrap();
    assert!(msg.contains(sock.to_str().unwrap()), "{v}");
    assert!(msg.contains("try again later"), "{v}");
}

#[test]
fn status_without_daemon_is_code_50() {
    let sock = dead_socket("status");
    let out = plugin(
        &[("CNI_COMMAND", "STATUS")],
        &conf("1.1.0", &sock, json!({})),
    );
    let v = out.error(50);
    let msg = v["msg"].as_str().unwrap();
    assert!(msg.contains("plugin not available"), "{v}");
    assert!(msg.contains(sock.to_str().unwrap()), "{v}");
    // STATUS arrived with 1.1.0.
    let out = plugin(
        &[("CNI_COMMAND", "STATUS")],
        &conf("1.0.0", &sock, json!({})),
    );
    out.error(1);
}

#[test]
fn del_without_daemon_or_netns_succeeds_repeatedly() {
    let sock = dead_socket("del");
    for netns in ["/nonexistent/netns/c1", ""] {
        for _ in 0..2 {
            let out = plugin(
                &with("DEL", &[("CNI_NETNS", netns)]),
                &conf("1.1.0", &sock, json!({})),
            );
            assert!(out.ok, "stdout {} stderr {}", out.stdout, out.stderr);
            assert_eq!(out.stdout, "");
        }
    }
    let out = plugin(&with("DEL", &[]), &conf("0.4.0", &sock, json!({})));
    assert!(out.ok, "{}", out.stdout);
}

#[test]
fn gc_needs_netd_and_version_1_1() {
    let sock = dead_socket("gc");
    let valid = json!({"cni.dev/valid-attachments": [
        {"containerID": "0123456789abcdef", "ifname": "eth0"}
    ]});
    let out = plugin(
        &[("CNI_COMMAND", "GC"), ("CNI_PATH", "/opt/cni/bin")],
        &conf("1.1.0", &sock, valid.clone()),
    );
    let v = out.error(11);
    assert!(
        v["msg"].as_str().unwrap().contains(sock.to_str().unwrap()),
        "{v}"
    );
    let out = plugin(&[("CNI_COMMAND", "GC")], &conf("1.0.0", &sock, valid));
    out.error(1);
    // No list at all is not "nothing is valid": releasing everything would be wrong.
    let out = plugin(&[("CNI_COMMAND", "GC")], &conf("1.1.0", &sock, json!({})));
    out.error(7);
    // libcni sends null for an empty list; that reaches netd (and fails here: no daemon).
    let out = plugin(
        &[("CNI_COMMAND", "GC")],
        &conf("1.1.0", &sock, json!({"cni.dev/valid-attachments": null})),
    );
    out.error(11);
}

#[test]
fn unknown_command_is_code_4() {
    let out = plugin(&[("CNI_COMMAND", "FROB")], b"{}");
    let v = out.error(4);
    assert!(v["msg"].as_str().unwrap().contains("CNI_COMMAND"), "{v}");
}
