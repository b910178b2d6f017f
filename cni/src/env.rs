//! The CNI_* environment. Each command asks for the variables it needs, so that DEL without
//! CNI_NETNS and VERSION without anything work, and a missing variable is reported by name.

use std::ffi::OsString;
use std::path::PathBuf;

use crate::error::PluginError;
use netd_core::model;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Gc,
    Status,
}

impl Command {
    pub fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "GC" => Command::Gc,
            "STATUS" => Command::Status,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Env {
    pub command: Command,
    container_id: Option<String>,
    netns: Option<PathBuf>,
    ifname: Option<String>,
    args: Option<String>,
}

/// Empty counts as unset: runtimes pass `CNI_NETNS=` on DEL once the namespace is gone.
fn non_empty(v: Option<OsString>) -> Option<OsString> {
    v.filter(|s| !s.is_empty())
}

fn utf8(var: &'static str, v: Option<OsString>) -> Result<Option<String>, PluginError> {
    non_empty(v)
        .map(|s| {
            s.into_string()
                .map_err(|s| PluginError::env(var, format!("{s:?} is not UTF-8")))
        })
        .transpose()
}

impl Env {
    pub fn from_process() -> Result<Env, PluginError> {
        Env::from_lookup(|k| std::env::var_os(k))
    }

    pub fn from_lookup(get: impl Fn(&str) -> Option<OsString>) -> Result<Env, PluginError> {
        let command = utf8("CNI_COMMAND", get("CNI_COMMAND"))?
            .ok_or_else(|| PluginError::env("CNI_COMMAND", "not set"))?;
        let command = Command::parse(&command).ok_or_else(|| {
            PluginError::env(
                "CNI_COMMAND",
                format!("{command:?} is not one of ADD, DEL, CHECK, VERSION, GC, STATUS"),
            )
        })?;
        Ok(Env {
            command,
            container_id: utf8("CNI_CONTAINERID", get("CNI_CONTAINERID"))?,
            netns: non_empty(get("CNI_NETNS")).map(PathBuf::from),
            ifname: utf8("CNI_IFNAME", get("CNI_IFNAME"))?,
            args: utf8("CNI_ARGS", get("CNI_ARGS"))?,
        })
    }

    /// Validated, because it becomes part of a path in netd's API.
    pub fn container_id(&self) -> Result<&str, PluginError> {
        let id = self
            .container_id
            .as_deref()
            .ok_or_else(|| PluginError::env("CNI_CONTAINERID", "not set"))?;
        model::validate_container_id(id)
            .map_err(|e| PluginError::env("CNI_CONTAINERID", e.to_string()))?;
        Ok(id)
    }

    pub fn ifname(&self) -> Result<&str, PluginError> {
        let name = self
            .ifname
            .as_deref()
            .ok_or_else(|| PluginError::env("CNI_IFNAME", "not set"))?;
        model::validate_ifname(name).map_err(|e| PluginError::env("CNI_IFNAME", e.to_string()))?;
        Ok(name)
    }

    pub fn netns(&self) -> Option<&std::path::Path> {
        self.netns.as_deref()
    }

    pub fn require_netns(&self) -> Result<&std::path::Path, PluginError> {
        self.netns()
            .ok_or_else(|| PluginError::env("CNI_NETNS", "not set"))
    }

    /// CNI_ARGS as `K=V;K2=V2`. netd-cni knows `IP` (fixed addresses, comma-separated, one
    /// per family) and `MAC`, the keys of the Kubernetes convention that the static IPAM and
    /// the reference plugins read. By the CNI convention a plugin refuses keys it does not know
    /// unless `IgnoreUnknown` is true, so a request nobody honours is not silently dropped.
    pub fn args(&self) -> Result<CniArgs, PluginError> {
        let mut out = CniArgs::default();
        let Some(args) = self.args.as_deref() else {
            return Ok(out);
        };
        let mut pairs = Vec::new();
        for part in args.split(';').filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').ok_or_else(|| {
                PluginError::env("CNI_ARGS", format!("{part:?} is not of the form KEY=VALUE"))
            })?;
            pairs.push((k, v));
        }
        let ignore_unknown = pairs
            .iter()
            .any(|(k, v)| *k == "IgnoreUnknown" && (*v == "1" || v.eq_ignore_ascii_case("true")));
        for (k, v) in pairs {
            match k {
                "IgnoreUnknown" => {}
                "IP" => {
                    for a in v.split(',').filter(|a| !a.is_empty()) {
                        out.ips.push(a.parse().map_err(|e| {
                            PluginError::env("CNI_ARGS", format!("IP: {e}"))
                        })?);
                    }
                }
                "MAC" => {
                    out.mac = Some(
                        v.parse()
                            .map_err(|e| PluginError::env("CNI_ARGS", format!("MAC: {e}")))?,
                    );
                }
                _ if ignore_unknown => {}
                _ => {
                    return Err(PluginError::env(
                        "CNI_ARGS",
                        format!("unknown key {k:?}: netd-cni takes IP and MAC (add IgnoreUnknown=1 to ignore other keys)"),
                    ))
                }
            }
        }
        Ok(out)
    }
}

/// What netd-cni takes from CNI_ARGS.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs {
    pub ips: Vec<model::RequestedAddr>,
    pub mac: Option<model::MacAddr>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> Result<Env, PluginError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Env::from_lookup(|k| map.get(k).map(OsString::from))
    }

    #[test]
    fn command_is_required_and_known() {
        assert_eq!(env(&[]).unwrap_err().code(), 4);
        let e = env(&[("CNI_COMMAND", "add")]).unwrap_err();
        assert_eq!(e.code(), 4);
        assert!(e.to_string().contains("CNI_COMMAND"), "{e}");
        assert_eq!(env(&[("CNI_COMMAND", "GC")]).unwrap().command, Command::Gc);
    }

    #[test]
    fn variables_are_required_on_demand_and_validated() {
        let e = env(&[("CNI_COMMAND", "ADD"), ("CNI_NETNS", "")]).unwrap();
        assert!(e
            .require_netns()
            .unwrap_err()
            .to_string()
            .contains("CNI_NETNS"));
        assert!(e
            .container_id()
            .unwrap_err()
            .to_string()
            .contains("CNI_CONTAINERID"));
        let e = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc/../x"),
            ("CNI_IFNAME", "eth0:1"),
        ])
        .unwrap();
        assert_eq!(e.container_id().unwrap_err().code(), 4);
        assert_eq!(e.ifname().unwrap_err().code(), 4);
        let e = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "ABC123"),
            ("CNI_IFNAME", "eth0"),
        ])
        .unwrap();
        assert_eq!(e.container_id().unwrap(), "ABC123");
        assert_eq!(e.ifname().unwrap(), "eth0");
    }

    #[test]
    fn cni_args_follow_the_ignore_unknown_convention() {
        let with = |a: &str| env(&[("CNI_COMMAND", "ADD"), ("CNI_ARGS", a)]).unwrap();
        assert_eq!(with("").args().unwrap(), CniArgs::default());
        assert!(with("IgnoreUnknown=1;K8S_POD_NAME=x;K8S_POD_NAMESPACE=y")
            .args()
            .is_ok());
        assert!(with("K8S_POD_NAME=x;IgnoreUnknown=true").args().is_ok());
        let e = with("K8S_POD_NAME=x").args().unwrap_err();
        assert_eq!(e.code(), 4);
        assert!(e.to_string().contains("CNI_ARGS"), "{e}");
        assert!(e.to_string().contains("K8S_POD_NAME"), "{e}");
        assert_eq!(with("garbage").args().unwrap_err().code(), 4);
        assert!(with("IgnoreUnknown=0").args().is_ok());
        assert!(with("IgnoreUnknown=0;X=1").args().is_err());
    }

    #[test]
    fn cni_args_carry_fixed_addresses_and_a_mac() {
        let with = |a: &str| env(&[("CNI_COMMAND", "ADD"), ("CNI_ARGS", a)]).unwrap();
        let a = with("IgnoreUnknown=1;K8S_POD_NAME=x;IP=10.0.0.5,fd00::5/64;MAC=02:00:00:00:00:09")
            .args()
            .unwrap();
        let ips: Vec<String> = a.ips.iter().map(|i| i.to_string()).collect();
        assert_eq!(ips, vec!["10.0.0.5", "fd00::5/64"]);
        assert_eq!(a.mac.unwrap().to_string(), "02:00:00:00:00:09");
        // Known keys need no IgnoreUnknown.
        assert_eq!(with("IP=10.0.0.5").args().unwrap().ips.len(), 1);
        for bad in [
            "IP=10.0.0.300",
            "MAC=01:00:5e:00:00:01",
            "IgnoreUnknown=1;MAC=x",
        ] {
            let e = with(bad).args().unwrap_err();
            assert_eq!(e.code(), 4, "{bad}");
            assert!(e.to_string().contains("CNI_ARGS"), "{e}");
        }
    }
}
