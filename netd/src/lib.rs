//! netd: a container network firewall manager.
//!
//! The crate is split into a pure core and kernel-facing edges (see docs/ARCHITECTURE.md):
//!
//! * core (no netlink, no tokio, no filesystem): [`model`], [`ipam`], [`plan`], [`conflist`]
//! * edges: [`nft`] (nf_tables netlink), [`ruleset`] (netd's table expressed for [`nft`]),
//!   [`link`] (rtnetlink: bridges, veths, netns), [`api`] (socket protocol and client),
//!   [`store`] (state on disk), [`config`] (netd.toml and flags)

pub mod api;
pub mod config;
pub mod conflist;
pub mod conntrack;
pub mod daemon;
pub mod ipam;
pub mod link;
pub mod model;
pub mod nft;
pub mod plan;
pub mod ports;
pub mod ruleset;
pub mod store;
