//! Forwarding checks. netd needs forwarding but never turns it on: enabling it also routes
//! between every other interface of the host, which is the operator's decision to make.

use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForwardingError {
    #[error("{sysctl} is {value} in this network namespace; netd needs it to route container traffic. Enable it with `sysctl -w {sysctl}=1` (persist it in /etc/sysctl.d/) and start netd again; netd never changes it itself")]
    Disabled { sysctl: &'static str, value: String },
    #[error("cannot read {sysctl}: {error}")]
    Unreadable { sysctl: &'static str, error: String },
}

fn read(sysctl: &'static str) -> Result<String, ForwardingError> {
    let path = Path::new("/proc/sys").join(sysctl.replace('.', "/"));
    std::fs::read_to_string(&path)
        .map(|s| s.trim().to_string())
        .map_err(|e| ForwardingError::Unreadable {
            sysctl,
            error: e.to_string(),
        })
}

fn require(sysctl: &'static str) -> Result<(), ForwardingError> {
    let value = read(sysctl)?;
    if value == "1" {
        Ok(())
    } else {
        Err(ForwardingError::Disabled { sysctl, value })
    }
}

pub fn require_ipv4_forwarding() -> Result<(), ForwardingError> {
    require("net.ipv4.ip_forward")
}

/// IPv6 forwarding is per interface; `all` is what applies to new bridges and what the
/// kernel consults for routing between interfaces.
pub fn require_ipv6_forwarding() -> Result<(), ForwardingError> {
    require("net.ipv6.conf.all.forwarding")
}
