//! The CNI network configuration list netd writes for each network, so a runtime pointed at
//! the CNI config directory can use the network with nothing else configured. Pure: renders
//! the file's name and content; the daemon writes it.

use serde_json::json;

use crate::model::Network;

/// The CNI version netd's conflists declare by default. Not the newest the plugin implements
/// (1.1.0): libcni before 1.2 (Podman 4, containerd 1.6/1.7) refuses results newer than 1.0.0,
/// so a 1.1.0 conflist breaks every ADD there.
pub const CNI_VERSION: &str = "1.0.0";

/// Every `cniVersion` netd-cni answers (its VERSION reply lists exactly these; a test in the
/// plugin holds the two lists together), so a network may declare any of them.
pub const CNI_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "CNI version {0:?} is not one netd-cni answers: use one of {list} (1.0.0 for Podman 4 and containerd 1.6/1.7, 1.1.0 for containerd 2.x's GC and STATUS)",
    list = CNI_VERSIONS.join(", ")
)]
pub struct UnsupportedVersion(pub String);

/// Checks a `cniVersion` asked for by an operator.
pub fn check_version(v: &str) -> Result<(), UnsupportedVersion> {
    if CNI_VERSIONS.contains(&v) {
        Ok(())
    } else {
        Err(UnsupportedVersion(v.to_string()))
    }
}

/// The plugin's `type`, i.e. the binary name runtimes look up in their CNI bin dirs.
pub const PLUGIN_TYPE: &str = "netd-cni";

/// `netd-NAME.conflist`: the prefix keeps netd's files apart from other software's in a shared
/// directory, and lets netd find its own files without parsing anybody else's.
pub fn file_name(network: &str) -> String {
    format!("netd-{network}.conflist")
}

/// The network's name if `file` is one of netd's conflists.
pub fn network_of(file: &str) -> Option<&str> {
    file.strip_prefix("netd-")?.strip_suffix(".conflist")
}

/// The conflist of `net`, declaring the network's own `cniVersion`.
pub fn render(net: &Network, socket: &str) -> String {
    let doc = json!({
        "cniVersion": net.cni_version,
        "name": net.name,
        "plugins": [{
            "type": PLUGIN_TYPE,
            "network": net.name,
            "socket": socket,
            "capabilities": { "portMappings": true, "ips": true, "mac": true }
        }]
    });
    let mut s = serde_json::to_string_pretty(&doc).expect("a JSON value serializes");
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(name: &str, version: &str) -> Network {
        Network {
            name: name.into(),
            bridge: format!("nd-{name}"),
            subnet4: Some("10.1.0.0/24".parse().unwrap()),
            gateway4: Some("10.1.0.1".parse().unwrap()),
            subnet6: None,
            gateway6: None,
            internal: false,
            icc: true,
            gateway_mode4: Default::default(),
            gateway_mode6: Default::default(),
            mtu: 1500,
            cni_version: version.into(),
            created: 0,
        }
    }

    #[test]
    fn conflist_names_the_plugin_socket_and_capability() {
        let text = render(&net("blue", CNI_VERSION), "/run/netd/netd.sock");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["cniVersion"], "1.0.0");
        assert_eq!(v["name"], "blue");
        let p = &v["plugins"][0];
        assert_eq!(p["type"], "netd-cni");
        assert_eq!(p["network"], "blue");
        assert_eq!(p["socket"], "/run/netd/netd.sock");
        assert_eq!(p["capabilities"]["portMappings"], true);
        assert_eq!(p["capabilities"]["ips"], true);
        assert_eq!(p["capabilities"]["mac"], true);
        assert_eq!(v["plugins"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn conflist_declares_the_network_s_version() {
        let text = render(&net("blue", "1.1.0"), "/s");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["cniVersion"], "1.1.0");
    }

    #[test]
    fn only_versions_the_plugin_answers_are_accepted() {
        for v in CNI_VERSIONS {
            check_version(v).unwrap();
        }
        for bad in ["1.2.0", "0.2.0", "1.0", "", "v1.0.0"] {
            let e = check_version(bad).unwrap_err().to_string();
            assert!(e.contains("1.0.0, 1.1.0") && e.contains(bad), "{e}");
        }
    }

    #[test]
    fn file_names_round_trip() {
        assert_eq!(file_name("blue"), "netd-blue.conflist");
        assert_eq!(network_of("netd-blue.conflist"), Some("blue"));
        assert_eq!(network_of("87-podman.conflist"), None);
        assert_eq!(network_of("netd-blue.conf"), None);
    }
}
