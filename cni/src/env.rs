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

    /// CNI_ARGS as `K=V;K2=V2`. netd-cni takes no keys; by the CNI convention a plugin refuses
    /// keys it does not know unless `IgnoreUnknown` is true, so a request for, say, a fixed
    /// `IP=` is not silently ignored.
    pub fn check_args(&self) -> Result<(), PluginError> {
        let Some(args) = self.args.as_deref() else {
            return Ok(());
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
        if ignore_unknown {
            return Ok(());
        }
        match pairs.iter().find(|(k, _)| *k != "IgnoreUnknown") {
            Some((k, _)) => Err(PluginError::env(
                "CNI_ARGS",
                format!("unknown key {k:?}: netd-cni takes no CNI_ARGS (add IgnoreUnknown=1 to ignore them)"),
            )),
            None => Ok(()),
        }
    }
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
        assert!(with("").check_args().is_ok());
        assert!(with("IgnoreUnknown=1;K8S_POD_NAME=x;K8S_POD_NAMESPACE=y")
            .check_args()
            .is_ok());
        assert!(with("K8S_POD_NAME=x;IgnoreUnknown=true")
            .check_args()
            .is_ok());
        let e = with("IP=10.0.0.5").check_args().unwrap_err();
        assert_eq!(e.code(), 4);
        assert!(e.to_string().contains("CNI_ARGS"), "{e}");
        assert_eq!(with("garbage").check_args().unwrap_err().code(), 4);
        assert!(with("IgnoreUnknown=0").check_args().is_ok());
    }
}
