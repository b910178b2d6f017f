//! The CNI network configuration list netd writes for each network, so a runtime pointed at
//! the CNI config directory can use the network with nothing else configured. Pure: renders
//! the file's name and content; the daemon writes it.

use serde_json::json;

/// The CNI version netd's conflists declare by default. Not the newest the plugin implements
/// (1.1.0): libcni before 1.2 (Podman 4, containerd 1.6/1.7) refuses results newer than 1.0.0,
/// so a 1.1.0 conflist breaks every ADD there.
pub const CNI_VERSION: &str = "1.0.0";

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

pub fn render(network: &str, socket: &str) -> String {
    let doc = json!({
        "cniVersion": CNI_VERSION,
        "name": network,
        "plugins": [{
            "type": PLUGIN_TYPE,
            "network": network,
            "socket": socket,
            "capabilities": { "portMappings": true }
        }]
    });
    let mut s = serde_json::to_string_pretty(&doc).expect("a JSON value serializes");
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflist_names_the_plugin_socket_and_capability() {
        let text = render("blue", "/run/netd/netd.sock");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["cniVersion"], "1.0.0");
        assert_eq!(v["name"], "blue");
        let p = &v["plugins"][0];
        assert_eq!(p["type"], "netd-cni");
        assert_eq!(p["network"], "blue");
        assert_eq!(p["socket"], "/run/netd/netd.sock");
        assert_eq!(p["capabilities"]["portMappings"], true);
        assert_eq!(v["plugins"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn file_names_round_trip() {
        assert_eq!(file_name("blue"), "netd-blue.conflist");
        assert_eq!(network_of("netd-blue.conflist"), Some("blue"));
        assert_eq!(network_of("87-podman.conflist"), None);
        assert_eq!(network_of("netd-blue.conf"), None);
    }
}
