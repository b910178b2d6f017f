//! netd's configuration file (`/etc/netd/netd.toml` by default) and how it combines with the
//! command line: every setting has a built-in default, the file overrides the default, and a
//! flag overrides the file. A missing default file means "all defaults"; a missing file named
//! with `--config` is an error, because the operator asked for it. Unknown keys are errors that
//! name the key and its line, so a typo never silently falls back to a default.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::{Ipv4Net, Ipv6Net};
use serde::Deserialize;

/// Where netd looks for its configuration when `--config` is not given.
pub const DEFAULT_CONFIG: &str = "/etc/netd/netd.toml";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/netd";
pub const DEFAULT_CNI_CONF_DIR: &str = "/etc/cni/net.d";
pub const DEFAULT_TABLE: &str = "netd";
pub const DEFAULT_POOL4: &str = "10.99.0.0/16";
pub const DEFAULT_SUBNET_SIZE: u8 = 24;
pub const DEFAULT_LOG: &str = "info";
/// How often the self-healing check looks at the table and the links.
pub const DEFAULT_CHECK_INTERVAL_SECS: u64 = 30;

/// The file as written. Every key is optional; `deny_unknown_fields` turns typos into errors.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct FileConfig {
    pub socket: Option<PathBuf>,
    /// Group that may use the socket (mode 0660); by default the socket stays root's group.
    pub socket_group: Option<String>,
    pub state_dir: Option<PathBuf>,
    pub cni_conf_dir: Option<PathBuf>,
    pub table: Option<String>,
    pub log: Option<String>,
    pub check_interval_secs: Option<u64>,
    /// `cniVersion` of conflists of networks created without `--cni-version`.
    pub cni_version: Option<String>,
    #[serde(default)]
    pub pools: Pools,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct Pools {
    /// Pool that automatic IPv4 subnets come from.
    pub ipv4: Option<Ipv4Net>,
    /// Prefix length of automatic IPv4 subnets.
    pub ipv4_subnet_size: Option<u8>,
    /// A /48 that automatic IPv6 subnets (/64s) come from, instead of a random ULA /48.
    pub ipv6_ula_base: Option<Ipv6Net>,
}

/// What the command line sets; `None` leaves the setting to the file or the default.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub socket: Option<PathBuf>,
    pub socket_group: Option<String>,
    pub state_dir: Option<PathBuf>,
    pub cni_conf_dir: Option<PathBuf>,
    pub table: Option<String>,
    pub default_pool: Option<Ipv4Net>,
    pub default_subnet_size: Option<u8>,
    pub ipv6_ula_base: Option<Ipv6Net>,
    pub log: Option<String>,
    pub check_interval_secs: Option<u64>,
    pub cni_version: Option<String>,
}

/// The settings netd runs with, after defaults, file and flags are combined and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub socket: PathBuf,
    pub socket_group: Option<String>,
    pub state_dir: PathBuf,
    pub cni_conf_dir: PathBuf,
    pub table: String,
    pub pool4: Ipv4Net,
    pub pool4_prefix: u8,
    pub ula_base: Option<Ipv6Net>,
    pub log: String,
    pub check_interval: Duration,
    /// Default `cniVersion` of new networks' conflists.
    pub cni_version: String,
    /// The file the settings were read from, if any.
    pub source: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}, line {line}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{path}: {message}")]
    ParseNoLine { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
}

/// The 1-based line of byte offset `at` in `text`.
fn line_of(text: &str, at: usize) -> usize {
    text.as_bytes()[..at.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// toml's messages for unknown keys read "unknown field `x`, expected one of ..."; say "key",
/// which is what the file calls it.
fn tidy(message: &str) -> String {
    message
        .trim()
        .replacen("unknown field", "unknown key", 1)
        .replacen("missing field", "missing key", 1)
}

impl FileConfig {
    /// Parses the text of a configuration file; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<FileConfig, ConfigError> {
        toml::from_str(text).map_err(|e| {
            let message = tidy(e.message());
            match e.span() {
                Some(Range { start, .. }) => ConfigError::Parse {
                    path: path.to_path_buf(),
                    line: line_of(text, start),
                    message,
                },
                None => ConfigError::ParseNoLine {
                    path: path.to_path_buf(),
                    message,
                },
            }
        })
    }

    /// Reads `path`. With `required == false` (the default path) a missing file is empty.
    pub fn load(path: &Path, required: bool) -> Result<Option<FileConfig>, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text, path).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => Ok(None),
            Err(source) => Err(ConfigError::Read {
                path: path.to_path_buf(),
                source,
            }),
        }
    }
}

impl Settings {
    /// Defaults, overridden by `file`, overridden by `flags`; then checked.
    pub fn resolve(
        file: Option<FileConfig>,
        source: Option<PathBuf>,
        flags: Overrides,
    ) -> Result<Settings, ConfigError> {
        let file = file.unwrap_or_default();
        let pool4 = match flags.default_pool.or(file.pools.ipv4) {
            Some(p) => p,
            None => DEFAULT_POOL4.parse().expect("the default pool parses"),
        };
        let s = Settings {
            socket: flags
                .socket
                .or(file.socket)
                .unwrap_or_else(|| crate::api::DEFAULT_SOCKET.into()),
            socket_group: flags.socket_group.or(file.socket_group),
            state_dir: flags
                .state_dir
                .or(file.state_dir)
                .unwrap_or_else(|| DEFAULT_STATE_DIR.into()),
            cni_conf_dir: flags
                .cni_conf_dir
                .or(file.cni_conf_dir)
                .unwrap_or_else(|| DEFAULT_CNI_CONF_DIR.into()),
            table: flags
                .table
                .or(file.table)
                .unwrap_or_else(|| DEFAULT_TABLE.into()),
            pool4,
            pool4_prefix: flags
                .default_subnet_size
                .or(file.pools.ipv4_subnet_size)
                .unwrap_or(DEFAULT_SUBNET_SIZE),
            ula_base: flags.ipv6_ula_base.or(file.pools.ipv6_ula_base),
            log: flags.log.or(file.log).unwrap_or_else(|| DEFAULT_LOG.into()),
            check_interval: Duration::from_secs(
                flags
                    .check_interval_secs
                    .or(file.check_interval_secs)
                    .unwrap_or(DEFAULT_CHECK_INTERVAL_SECS),
            ),
            cni_version: flags
                .cni_version
                .or(file.cni_version)
                .unwrap_or_else(|| crate::conflist::CNI_VERSION.into()),
            source,
        };
        s.check()?;
        Ok(s)
    }

    fn check(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if crate::model::validate_network_name(&self.table).is_err() {
            return bad(format!(
                "table {:?}: use letters, digits, '_', '.' or '-' (at most 64)",
                self.table
            ));
        }
        if !(8..=30).contains(&self.pool4_prefix) {
            return bad(format!(
                "subnet size /{} is out of range: use 8 to 30",
                self.pool4_prefix
            ));
        }
        if self.pool4_prefix < self.pool4.prefix_len() {
            return bad(format!(
                "subnets of /{} do not fit in the pool {}: use a size of /{} or more",
                self.pool4_prefix,
                self.pool4,
                self.pool4.prefix_len()
            ));
        }
        if self.pool4 != self.pool4.trunc() {
            return bad(format!(
                "pool {} has host bits set; did you mean {}?",
                self.pool4,
                self.pool4.trunc()
            ));
        }
        if let Some(ula) = self.ula_base {
            if ula.prefix_len() != 48 || ula != ula.trunc() {
                return bad(format!(
                    "ipv6_ula_base {ula} must be a /48 without host bits (netd takes /64s from it)"
                ));
            }
            if ula.addr().segments()[0] & 0xfe00 != 0xfc00 {
                return bad(format!(
                    "ipv6_ula_base {ula} is not a unique local address (fc00::/7); automatic subnets must never collide with global addresses"
                ));
            }
        }
        if let Err(e) = crate::conflist::check_version(&self.cni_version) {
            return bad(format!("cni_version: {e}"));
        }
        if self.check_interval.is_zero() {
            return bad("check_interval_secs must be at least 1".into());
        }
        if let Some(g) = &self.socket_group {
            if g.is_empty() {
                return bad("socket_group is empty; leave it out to keep root's group".into());
            }
        }
        Ok(())
    }
}

/// The configuration file `scripts/install.sh` installs: every key, commented out at its
/// default, so the file documents itself (a unit test holds it to the constants above).
pub const DEFAULT_FILE: &str = include_str!("../netd.toml");

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<FileConfig, ConfigError> {
        FileConfig::parse(text, Path::new("netd.toml"))
    }

    #[test]
    fn empty_and_missing_files_mean_defaults() {
        let s = Settings::resolve(Some(parse("").unwrap()), None, Overrides::default()).unwrap();
        let d = Settings::resolve(None, None, Overrides::default()).unwrap();
        assert_eq!(s, d);
        assert_eq!(d.socket, PathBuf::from("/run/netd/netd.sock"));
        assert_eq!(d.table, "netd");
        assert_eq!(d.pool4, "10.99.0.0/16".parse::<Ipv4Net>().unwrap());
        assert_eq!(d.pool4_prefix, 24);
        assert_eq!(d.ula_base, None);
        assert_eq!(d.check_interval, Duration::from_secs(30));
        assert_eq!(d.cni_version, "1.0.0");
        let missing = FileConfig::load(Path::new("/nonexistent/netd.toml"), false).unwrap();
        assert_eq!(missing, None);
    }

    #[test]
    fn a_missing_file_named_explicitly_is_an_error() {
        let e = FileConfig::load(Path::new("/nonexistent/netd.toml"), true).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/netd.toml"), "{e}");
    }

    #[test]
    fn the_installed_default_file_parses_to_the_defaults() {
        let f = parse(DEFAULT_FILE).unwrap();
        assert_eq!(f, FileConfig::default());
        for constant in [
            crate::api::DEFAULT_SOCKET,
            DEFAULT_STATE_DIR,
            DEFAULT_CNI_CONF_DIR,
            DEFAULT_POOL4,
        ] {
            assert!(
                DEFAULT_FILE.contains(&format!("\"{constant}\"")),
                "{constant}"
            );
        }
        assert!(DEFAULT_FILE.contains(&format!("= {DEFAULT_SUBNET_SIZE}\n")));
        assert!(DEFAULT_FILE.contains(&format!("= {DEFAULT_CHECK_INTERVAL_SECS}\n")));
        assert!(DEFAULT_FILE.contains(&format!(
            "cni_version = \"{}\"\n",
            crate::conflist::CNI_VERSION
        )));
        // And with every key uncommented it still parses, to the same values.
        let all: String = DEFAULT_FILE
            .lines()
            .map(|l| {
                l.strip_prefix('#')
                    .filter(|r| r.contains(" = "))
                    .unwrap_or(l)
            })
            .collect::<Vec<_>>()
            .join("\n");
        let f = parse(&all).unwrap();
        let s = Settings::resolve(Some(f), None, Overrides::default()).unwrap();
        assert_eq!(s.socket_group.as_deref(), Some("netd"));
        assert_eq!(s.ula_base, Some("fd00:dead:beef::/48".parse().unwrap()));
        assert_eq!(s.pool4_prefix, 24);
    }

    #[test]
    fn unknown_keys_name_the_key_and_the_line() {
        let e = parse("socket = \"/run/x.sock\"\n\ntabel = \"x\"\n").unwrap_err();
        let m = e.to_string();
        assert!(matches!(e, ConfigError::Parse { line: 3, .. }), "{m}");
        assert!(m.contains("unknown key `tabel`"), "{m}");
        assert!(m.contains("line 3"), "{m}");

        let e = parse("[pools]\nipv4 = \"10.1.0.0/16\"\nipv6_base = \"fd00::/48\"\n").unwrap_err();
        let m = e.to_string();
        assert!(matches!(e, ConfigError::Parse { line: 3, .. }), "{m}");
        assert!(m.contains("ipv6_base"), "{m}");

        let e = parse("[pool]\nipv4 = \"10.1.0.0/16\"\n").unwrap_err();
        assert!(matches!(e, ConfigError::Parse { line: 1, .. }), "{e}");
    }

    #[test]
    fn bad_values_are_reported_with_their_line() {
        let e = parse("log = \"info\"\n[pools]\nipv4 = \"10.1.0.0\"\n").unwrap_err();
        assert!(matches!(e, ConfigError::Parse { line: 3, .. }), "{e}");
        let e = parse("check_interval_secs = \"30\"\n").unwrap_err();
        assert!(matches!(e, ConfigError::Parse { line: 1, .. }), "{e}");
    }

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let f = parse(
            "table = \"fromfile\"\nsocket = \"/run/file.sock\"\nlog = \"debug\"\n\
             [pools]\nipv4 = \"10.50.0.0/16\"\nipv4_subnet_size = 26\n",
        )
        .unwrap();
        let flags = Overrides {
            table: Some("fromflag".into()),
            default_subnet_size: Some(28),
            ..Overrides::default()
        };
        let s = Settings::resolve(Some(f), Some("netd.toml".into()), flags).unwrap();
        assert_eq!(s.table, "fromflag");
        assert_eq!(s.pool4_prefix, 28);
        assert_eq!(s.socket, PathBuf::from("/run/file.sock"));
        assert_eq!(s.pool4, "10.50.0.0/16".parse::<Ipv4Net>().unwrap());
        assert_eq!(s.log, "debug");
        assert_eq!(s.cni_conf_dir, PathBuf::from("/etc/cni/net.d"));
    }

    #[test]
    fn combined_settings_are_checked() {
        let res =
            |text: &str| Settings::resolve(Some(parse(text).unwrap()), None, Overrides::default());
        let e = res("[pools]\nipv4 = \"10.1.0.0/24\"\nipv4_subnet_size = 16\n").unwrap_err();
        assert!(e.to_string().contains("do not fit"), "{e}");
        let e = res("[pools]\nipv6_ula_base = \"2001:db8::/48\"\n").unwrap_err();
        assert!(e.to_string().contains("unique local"), "{e}");
        let e = res("[pools]\nipv6_ula_base = \"fd00::/56\"\n").unwrap_err();
        assert!(e.to_string().contains("/48"), "{e}");
        let e = res("table = \"bad name\"\n").unwrap_err();
        assert!(e.to_string().contains("table"), "{e}");
        let e = res("cni_version = \"1.2.0\"\n").unwrap_err();
        assert!(
            e.to_string().contains("cni_version") && e.to_string().contains("1.2.0"),
            "{e}"
        );
        let s = res("cni_version = \"1.1.0\"\n").unwrap();
        assert_eq!(s.cni_version, "1.1.0");
        let e = res("check_interval_secs = 0\n").unwrap_err();
        assert!(e.to_string().contains("at least 1"), "{e}");
    }
}
