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
//! removes them, also when a test panics. netd is also spawned with
//! `PR_SET_PDEATHSIG=SIGKILL`, so it dies with a test process killed outright
//! (only the netns of such a process can be left behind).
//!
//! ```no_run
//! use netd_netns_tests::*;
//! let mut w = World::new();              // host netns + external netns
//! w.start_netd();                        // waits until the socket answers
//! w.create_network("a", &["--subnet", "10.89.1.0/24"]);
//! let c1 = w.container("c1");            // CNI_CONTAINERID = "c1"
//! let r = w.cni_add(&c1, "a");           // netd-cni ADD, as libcni runs it
//! let ext = TcpServer::start(&w.external);
//! let seen = assert_tcp_ok(&c1, ext.addr("192.0.2.2".parse().unwrap()));
//! assert_eq!(seen.ip().to_string(), "192.0.2.1"); // masqueraded
//! # let _ = r;
//! ```
//!
//! Real runtimes ([`runtime`]): Podman and containerd run in the World's host netns and a
//! private mount namespace of their own ([`runtime::Sandbox`]), where netd runs too; every
//! process they start is killed on drop. A missing runtime fails the test; only
//! `NETD_TESTS_ALLOW_SKIP=1` (never set in CI) turns it into a skip.
//!
//! Environment: `NETD_BIN_DIR` overrides where netd, netctl and netd-cni are
//! looked up (default: the cargo profile dir of the test executable, so run
//! `cargo build --workspace --bins` first); `NETD_TEST_KEEP=1` keeps the temp
//! dirs (netd log, state, conflists); `NETD_LOG` is passed to netd (default
//! `debug` here). netd's log is printed when a test panics.

pub mod image;
pub mod matrix;
pub mod netns;
pub mod probe;
pub mod runtime;
pub mod util;
pub mod world;

pub use netns::{NetSnapshot, Netns};
pub use probe::{
    assert_ping_fails, assert_ping_ok, assert_tcp_blocked, assert_tcp_ok, assert_udp_blocked,
    assert_udp_ok, ping, tcp_probe, udp_probe, TcpServer, UdpServer, PROBE_TIMEOUT,
};
pub use util::{bin_dir, run, run_ok, unique_name, CmdOutput};
pub use world::{CniOutput, World, WorldOptions};
