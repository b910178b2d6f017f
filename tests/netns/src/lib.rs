//! Integration-test harness for netd, netctl and netd-cni.
//!
//! Every test builds its own private network namespaces: a "host" netns in
//! which netd runs (with forwarding enabled *inside* it), an "external" netns
//! reached from the host through a veth pair, and one netns per container.
//! Nothing is ever changed in the machine's root network namespace: links are
//! created with `ip -n NS ...` directly inside the private namespaces, and
//! sysctls and nft rules are set through `ip netns exec NS ...`.
//!
//! All namespaces, temporary directories and child processes are owned by
//! guards ([`Netns`], [`World`], [`TcpServer`], [`UdpServer`]) whose `Drop`
//! removes them, also when a test panics.

pub mod netns;
pub mod probe;
pub mod util;
pub mod world;

pub use netns::{NetSnapshot, Netns};
pub use probe::{
    assert_ping_fails, assert_ping_ok, assert_tcp_blocked, assert_tcp_ok, assert_udp_blocked,
    assert_udp_ok, ping, tcp_probe, udp_probe, TcpServer, UdpServer, PROBE_TIMEOUT,
};
pub use util::{bin_dir, run, run_ok, unique_name, CmdOutput};
pub use world::{CniOutput, World, WorldOptions};
