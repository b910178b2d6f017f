//! netd: the daemon's library (its engine, server, healer, state store and configuration) and
//! the crates it is built from, re-exported under the names the daemon and its tests use.
//!
//! The layers are crates, so Cargo enforces them (see docs/ARCHITECTURE.md):
//!
//! * `netd-core` (pure: no netlink, no tokio, no filesystem): [`model`], [`ipam`], [`ports`],
//!   [`resolve`] (requests → networks and endpoints), [`plan`], [`conflist`]
//! * `netd-nft`: [`nft`] (nf_tables netlink) and [`ruleset`] (netd's table expressed for it)
//! * `netd-link`: [`link`] (rtnetlink: bridges, veths, netns)
//! * `netd-api`: [`api`] (socket protocol and client)
//! * here: [`daemon`], [`store`] (state on disk), [`config`] (netd.toml and flags),
//!   [`conntrack`] (ctnetlink)

pub use netd_api as api;
pub use netd_core::{conflist, endpoints, ipam, model, plan, ports, resolve};
pub use netd_link as link;
pub use netd_nft as nft;
pub use netd_nft::ruleset;

pub mod config;
pub mod conntrack;
pub mod daemon;
pub mod store;
