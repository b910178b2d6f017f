//! The plugin's errors and the CNI error codes they become.
//!
//! Codes 1–11 and 50 are the spec's (`SPEC.md`, "Error codes"). Codes from 100 up are ours;
//! runtimes show them to people and log them, they do not act on them:
//!
//! | code | meaning |
//! |------|---------|
//! | 100  | rejected by netd: the request clashes with existing state (a host port is taken, the interface is already attached) |
//! | 101  | netd failed internally, or answered something we cannot read |
//! | 102  | a kernel link operation failed (bridge, veth, addresses, routes) |
//! | 103  | CHECK found the attachment differing from what netd and prevResult say |

use netd_api::{ClientError, ErrorKind};

pub const CODE_INCOMPATIBLE_VERSION: u32 = 1;
pub const CODE_UNSUPPORTED_FIELD: u32 = 2;
pub const CODE_UNKNOWN_CONTAINER: u32 = 3;
pub const CODE_INVALID_ENV: u32 = 4;
pub const CODE_IO: u32 = 5;
pub const CODE_DECODE: u32 = 6;
pub const CODE_INVALID_CONFIG: u32 = 7;
pub const CODE_TRY_AGAIN_LATER: u32 = 11;
pub const CODE_NOT_AVAILABLE: u32 = 50;
pub const CODE_CONFLICT: u32 = 100;
pub const CODE_NETD_INTERNAL: u32 = 101;
pub const CODE_LINK: u32 = 102;
pub const CODE_CHECK_FAILED: u32 = 103;

#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("{msg}")]
    IncompatibleVersion { msg: String },
    #[error("unsupported field {field:?}")]
    UnsupportedField { field: String, reason: String },
    #[error("{msg}")]
    UnknownContainer { msg: String },
    #[error("invalid environment variable {var}: {reason}")]
    InvalidEnv { var: &'static str, reason: String },
    #[error("{msg}")]
    Io { msg: String, details: String },
    #[error("{msg}")]
    Decode { msg: String, details: String },
    #[error("{msg}")]
    InvalidConfig { msg: String, details: String },
    #[error("{msg}")]
    TryAgainLater { msg: String, details: String },
    #[error("{msg}")]
    NotAvailable { msg: String, details: String },
    #[error("{msg}")]
    Conflict { msg: String, details: String },
    #[error("{msg}")]
    NetdInternal { msg: String, details: String },
    #[error("{msg}")]
    Link { msg: String, details: String },
    #[error("{msg}")]
    CheckFailed { msg: String, details: String },
}

impl PluginError {
    pub fn code(&self) -> u32 {
        match self {
            PluginError::IncompatibleVersion { .. } => CODE_INCOMPATIBLE_VERSION,
            PluginError::UnsupportedField { .. } => CODE_UNSUPPORTED_FIELD,
            PluginError::UnknownContainer { .. } => CODE_UNKNOWN_CONTAINER,
            PluginError::InvalidEnv { .. } => CODE_INVALID_ENV,
            PluginError::Io { .. } => CODE_IO,
            PluginError::Decode { .. } => CODE_DECODE,
            PluginError::InvalidConfig { .. } => CODE_INVALID_CONFIG,
            PluginError::TryAgainLater { .. } => CODE_TRY_AGAIN_LATER,
            PluginError::NotAvailable { .. } => CODE_NOT_AVAILABLE,
            PluginError::Conflict { .. } => CODE_CONFLICT,
            PluginError::NetdInternal { .. } => CODE_NETD_INTERNAL,
            PluginError::Link { .. } => CODE_LINK,
            PluginError::CheckFailed { .. } => CODE_CHECK_FAILED,
        }
    }

    pub fn details(&self) -> String {
        match self {
            PluginError::UnsupportedField { reason, .. } => reason.clone(),
            PluginError::InvalidEnv { reason, .. } => reason.clone(),
            PluginError::IncompatibleVersion { .. } | PluginError::UnknownContainer { .. } => {
                String::new()
            }
            PluginError::Io { details, .. }
            | PluginError::Decode { details, .. }
            | PluginError::InvalidConfig { details, .. }
            | PluginError::TryAgainLater { details, .. }
            | PluginError::NotAvailable { details, .. }
            | PluginError::Conflict { details, .. }
            | PluginError::NetdInternal { details, .. }
            | PluginError::Link { details, .. }
            | PluginError::CheckFailed { details, .. } => details.clone(),
        }
    }

    pub fn invalid_config(msg: impl Into<String>) -> Self {
        PluginError::InvalidConfig {
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn decode(msg: impl Into<String>, details: impl Into<String>) -> Self {
        PluginError::Decode {
            msg: msg.into(),
            details: details.into(),
        }
    }

    pub fn env(var: &'static str, reason: impl Into<String>) -> Self {
        PluginError::InvalidEnv {
            var,
            reason: reason.into(),
        }
    }

    pub fn link(msg: impl Into<String>, details: impl Into<String>) -> Self {
        PluginError::Link {
            msg: msg.into(),
            details: details.into(),
        }
    }

    pub fn check(msg: impl Into<String>) -> Self {
        PluginError::CheckFailed {
            msg: msg.into(),
            details: String::new(),
        }
    }

    /// Appends to the details; used to report what a rollback could not undo without hiding
    /// the step that failed first.
    pub fn with_note(mut self, note: &str) -> Self {
        if note.is_empty() {
            return self;
        }
        let slot = match &mut self {
            PluginError::UnsupportedField { reason, .. } => reason,
            PluginError::InvalidEnv { reason, .. } => reason,
            PluginError::IncompatibleVersion { msg } | PluginError::UnknownContainer { msg } => msg,
            PluginError::Io { details, .. }
            | PluginError::Decode { details, .. }
            | PluginError::InvalidConfig { details, .. }
            | PluginError::TryAgainLater { details, .. }
            | PluginError::NotAvailable { details, .. }
            | PluginError::Conflict { details, .. }
            | PluginError::NetdInternal { details, .. }
            | PluginError::Link { details, .. }
            | PluginError::CheckFailed { details, .. } => details,
        };
        if !slot.is_empty() {
            slot.push_str("; ");
        }
        slot.push_str(note);
        self
    }

    /// Maps a failed netd call; `what` says which call, for the message.
    pub fn from_netd(what: &str, e: ClientError) -> Self {
        match e {
            ClientError::Unreachable { path, source } => PluginError::TryAgainLater {
                msg: format!(
                    "netd is not reachable at {}: try again later",
                    path.display()
                ),
                details: format!("{what}: {source}"),
            },
            ClientError::Io { path, source } => PluginError::Io {
                msg: format!("{what}: talking to netd at {} failed", path.display()),
                details: source.to_string(),
            },
            ClientError::Protocol(details) => PluginError::NetdInternal {
                msg: format!("{what}: netd sent an answer the plugin cannot read"),
                details,
            },
            ClientError::Api(api) => {
                let msg = format!("{what}: {}", api.message);
                match api.kind {
                    ErrorKind::Invalid | ErrorKind::NotFound => PluginError::InvalidConfig {
                        msg,
                        details: String::new(),
                    },
                    ErrorKind::Conflict => PluginError::Conflict {
                        msg: format!("rejected by netd: {}", api.message),
                        details: what.to_string(),
                    },
                    ErrorKind::Internal => PluginError::NetdInternal {
                        msg,
                        details: String::new(),
                    },
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netd_api::ApiError;
    use std::path::PathBuf;

    #[test]
    fn netd_errors_map_to_cni_codes() {
        let unreachable = ClientError::Unreachable {
            path: PathBuf::from("/run/x.sock"),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        let e = PluginError::from_netd("attach", unreachable);
        assert_eq!(e.code(), 11);
        assert!(e.to_string().contains("/run/x.sock"), "{e}");

        let cases = [
            (ApiError::invalid("bad"), 7),
            (ApiError::not_found("no such network"), 7),
            (ApiError::conflict("port 80/tcp is taken by c1"), 100),
            (ApiError::internal("nft said no"), 101),
        ];
        for (api, code) in cases {
            assert_eq!(
                PluginError::from_netd("attach", ClientError::Api(api)).code(),
                code
            );
        }
        let conflict =
            PluginError::from_netd("attach", ClientError::Api(ApiError::conflict("port taken")));
        assert_eq!(conflict.to_string(), "rejected by netd: port taken");
        assert_eq!(
            PluginError::from_netd("x", ClientError::Protocol("junk".into())).code(),
            101
        );
    }

    #[test]
    fn notes_are_appended_to_details() {
        let e = PluginError::link("ADD failed at create_veth", "EEXIST")
            .with_note("")
            .with_note("detach failed: gone");
        assert_eq!(e.details(), "EEXIST; detach failed: gone");
        assert_eq!(e.code(), 102);
    }
}
