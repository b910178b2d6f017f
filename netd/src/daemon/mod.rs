//! The daemon: the engine that owns state and the table, the socket server in front of it,
//! and the kernel-facing pieces it drives.

pub mod engine;
pub mod heal;
pub mod host;
pub mod notify;
pub mod reaper;
pub mod server;
pub mod sweeper;
pub mod sysctl;

pub use engine::{Engine, EngineConfig, EngineError, Kernel};
