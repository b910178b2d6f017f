//! netd's pure core: the network model, address management, published-port bookkeeping, the
//! planner (state → the table's contents) and the CNI conflist netd writes.
//!
//! Nothing here does I/O: no netlink, no tokio, no filesystem. Values in, values out, so all
//! of it is unit-tested without root and the daemon, the CLI and the plugin agree on it.
#![forbid(unsafe_code)]

pub mod conflist;
pub mod endpoints;
pub mod ipam;
pub mod model;
pub mod plan;
pub mod ports;
pub mod resolve;
