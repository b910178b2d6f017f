//! netd: keeps one nftables table in step with the container networks it manages, and serves
//! netctl and the CNI plugin on a Unix socket.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context};
use clap::Parser;
use ipnet::Ipv4Net;
use tracing::info;

use netd::daemon::host::HostKernel;
use netd::daemon::{server, sysctl, Engine, EngineConfig};
use netd::store::Store;

#[derive(Parser, Debug)]
#[command(
    name = "netd",
    version,
    about = "Container network firewall manager (daemon)"
)]
struct Args {
    /// Unix socket for the API (netctl and the CNI plugin).
    #[arg(long, default_value = netd::api::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Directory for netd's state (networks, endpoints).
    #[arg(long, default_value = "/var/lib/netd")]
    state_dir: PathBuf,
    /// Directory where netd writes a CNI conflist per network.
    #[arg(long, default_value = "/etc/cni/net.d")]
    cni_conf_dir: PathBuf,
    /// Name of netd's nftables table (family inet). netd touches nothing outside it.
    #[arg(long, default_value = "netd")]
    table: String,
    /// Pool that IPv4 subnets are taken from when a network is created without --subnet.
    #[arg(long, default_value = "10.99.0.0/16")]
    default_pool: Ipv4Net,
    /// Prefix length of subnets taken from the default pool.
    #[arg(long, default_value_t = 24, value_parser = clap::value_parser!(u8).range(8..=30))]
    default_subnet_size: u8,
    /// Log filter (tracing's env-filter syntax), e.g. info or netd=debug.
    #[arg(long, env = "NETD_LOG", default_value = "info")]
    log: String,
}

fn main() {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&args.log))
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run(args) {
        eprintln!("netd: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    sysctl::require_ipv4_forwarding()?;
    if netd::model::validate_network_name(&args.table).is_err() {
        bail!(
            "--table {:?}: use letters, digits, '_', '.' or '-' (at most 64)",
            args.table
        );
    }
    let store = Store::open(&args.state_dir).context("opening the state directory")?;
    let kernel = HostKernel::new(&args.table).context("opening nf_tables")?;
    let cfg = EngineConfig {
        table: args.table.clone(),
        socket: args.socket.clone(),
        cni_conf_dir: args.cni_conf_dir.clone(),
        pool4: args.default_pool,
        pool4_prefix: args.default_subnet_size,
    };
    let mut engine = Engine::start(cfg, store, Box::new(kernel)).context("starting")?;
    if engine.has_ipv6() {
        sysctl::require_ipv6_forwarding()?;
    }
    let report = engine.reconcile_links().context("reconciling links")?;
    info!(
        released = report.released.len(),
        veths_removed = report.veths_removed.len(),
        bridges_removed = report.bridges_removed.len(),
        "links reconciled with state"
    );
    let engine = Arc::new(Mutex::new(engine));

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let listener = server::bind(&args.socket)?;
        info!(socket = %args.socket.display(), table = %args.table, "netd ready");
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = server::serve(listener, engine.clone()) => {}
            _ = term.recv() => info!("SIGTERM: stopping"),
            _ = tokio::signal::ctrl_c() => info!("SIGINT: stopping"),
        }
        // Wait for a change in progress to finish; the table stays so containers keep working.
        drop(engine.lock().unwrap_or_else(|p| p.into_inner()));
        let _ = std::fs::remove_file(&args.socket);
        Ok::<_, anyhow::Error>(())
    })
}
