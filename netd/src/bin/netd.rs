//! netd: keeps one nftables table in step with the container networks it manages, and serves
//! netctl and the CNI plugin on a Unix socket.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use clap::{CommandFactory, Parser};
use ipnet::{Ipv4Net, Ipv6Net};
use tracing::{info, warn};

use netd::config::{self, FileConfig, Overrides, Settings};
use netd::daemon::host::HostKernel;
use netd::daemon::{notify, server, sysctl, Engine, EngineConfig};
use netd::store::Store;

#[derive(Parser, Debug)]
#[command(
    name = "netd",
    version,
    about = "Container network firewall manager (daemon)",
    after_help = "Settings come from the built-in defaults, then the configuration file, then these flags."
)]
struct Args {
    /// Configuration file (TOML). A missing default file means all defaults.
    #[arg(long, value_name = "FILE", default_value = config::DEFAULT_CONFIG)]
    config: PathBuf,
    /// Print the settings that result from the defaults, the file and the flags, and exit.
    #[arg(long)]
    check_config: bool,
    /// Print netd's man page (roff) and exit; the installer uses it.
    #[arg(long, hide = true)]
    man: bool,
    /// Unix socket for the API (netctl and the CNI plugin) [default: /run/netd/netd.sock].
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Group whose members may use the socket besides root (mode 0660); unset, or a group that
    /// does not exist, keeps the socket root-only (root:root 0600) [default: unset].
    #[arg(long, value_name = "GROUP")]
    socket_group: Option<String>,
    /// Directory for netd's state (networks, endpoints) [default: /var/lib/netd].
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Directory where netd writes a CNI conflist per network [default: /etc/cni/net.d].
    #[arg(long, value_name = "DIR")]
    cni_conf_dir: Option<PathBuf>,
    /// Name of netd's nftables table (family inet); netd touches nothing outside it [default: netd].
    #[arg(long, value_name = "NAME")]
    table: Option<String>,
    /// Pool that IPv4 subnets are taken from when a network is created without --subnet
    /// [default: 10.99.0.0/16].
    #[arg(long, value_name = "CIDR")]
    default_pool: Option<Ipv4Net>,
    /// Prefix length of subnets taken from the default pool [default: 24].
    #[arg(long, value_name = "BITS", value_parser = clap::value_parser!(u8).range(8..=30))]
    default_subnet_size: Option<u8>,
    /// ULA /48 that automatic IPv6 subnets come from [default: a random one, kept in state].
    #[arg(long, value_name = "CIDR")]
    ipv6_ula_base: Option<Ipv6Net>,
    /// Seconds between checks that the table still matches the state, besides watching
    /// nftables notifications [default: 30].
    #[arg(long, env = "NETD_CHECK_INTERVAL", value_name = "SECS")]
    check_interval: Option<u64>,
    /// cniVersion of the conflists of networks created without one: 1.0.0 for Podman 4 and
    /// containerd 1.6/1.7, 1.1.0 for containerd 2.x (GC, STATUS) [default: 1.0.0].
    #[arg(long, value_name = "VERSION")]
    cni_version: Option<String>,
    /// Log filter (tracing's env-filter syntax), e.g. info or netd=debug [default: info].
    #[arg(long, env = "NETD_LOG", value_name = "FILTER")]
    log: Option<String>,
}

impl Args {
    /// Reads the configuration file and lays the flags over it.
    fn settings(&self) -> Result<Settings, config::ConfigError> {
        let explicit = self.config != Path::new(config::DEFAULT_CONFIG);
        let file = FileConfig::load(&self.config, explicit)?;
        let source = file.as_ref().map(|_| self.config.clone());
        let flags = Overrides {
            socket: self.socket.clone(),
            socket_group: self.socket_group.clone(),
            state_dir: self.state_dir.clone(),
            cni_conf_dir: self.cni_conf_dir.clone(),
            table: self.table.clone(),
            default_pool: self.default_pool,
            default_subnet_size: self.default_subnet_size,
            ipv6_ula_base: self.ipv6_ula_base,
            log: self.log.clone(),
            check_interval_secs: self.check_interval,
            cni_version: self.cni_version.clone(),
        };
        Settings::resolve(file, source, flags)
    }
}

fn main() {
    // glibc gives every thread that allocates (async workers, the blocking pool, the healer,
    // the link reaper) its own malloc arena, whose freed memory stays resident; netd applies
    // one change at a time, so two arenas are plenty and keep its footprint flat.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes the allocator; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
    let args = Args::parse();
    if args.man {
        let mut out = Vec::new();
        clap_mangen::Man::new(Args::command())
            .section("8")
            .render(&mut out)
            .expect("rendering into memory");
        let _ = std::io::Write::write_all(&mut std::io::stdout(), &out);
        return;
    }
    let settings = match args.settings() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("netd: {e}");
            std::process::exit(2);
        }
    };
    if args.check_config {
        println!("{settings:#?}");
        return;
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&settings.log))
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal: journald and log files get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let Err(e) = run(settings) {
        eprintln!("netd: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: Settings) -> anyhow::Result<()> {
    sysctl::require_ipv4_forwarding()?;
    if let Some(file) = &args.source {
        info!(config = %file.display(), "configuration read");
    }
    let store = Store::open(&args.state_dir).context("opening the state directory")?;
    let kernel = HostKernel::new(&args.table).context("opening nf_tables")?;
    let hearing = kernel.hearing_slot();
    let cfg = EngineConfig {
        table: args.table.clone(),
        socket: args.socket.clone(),
        cni_conf_dir: args.cni_conf_dir.clone(),
        pool4: args.pool4,
        pool4_prefix: args.pool4_prefix,
        ula_base: args.ula_base,
        cni_version: args.cni_version.clone(),
    };
    // An EngineError's message already names its cause, so it becomes one line here rather
    // than a chain that would print the cause twice.
    let mut engine = Engine::start(cfg, store, Box::new(kernel))
        .map_err(|e| anyhow::anyhow!("starting: {e}"))?;
    if engine.has_ipv6() {
        sysctl::require_ipv6_forwarding()?;
    }
    let report = engine
        .reconcile_links()
        .map_err(|e| anyhow::anyhow!("reconciling links: {e}"))?;
    info!(
        released = report.released.len(),
        veths_removed = report.veths_removed.len(),
        bridges_removed = report.bridges_removed.len(),
        "links reconciled with state"
    );
    let engine = Arc::new(Mutex::new(engine));
    let mut healer = netd::daemon::heal::Healer::new(engine.clone(), args.check_interval)
        .context("watching nf_tables")?;
    healer
        .lend_hearing(&hearing)
        .context("sharing the healer's nf_tables subscription")?;
    healer.spawn().context("starting the healer thread")?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let listener = server::bind_secure(&args.socket, args.socket_group.as_deref())?;
        info!(socket = %args.socket.display(), table = %args.table, "netd ready");
        // Only now: the table is applied and the socket accepts connections.
        if let Err(e) = notify::ready(&format!("table inet {} applied; listening", args.table)) {
            warn!(error = %e, "could not notify systemd");
        }
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = server::serve(listener, engine.clone()) => {}
            _ = term.recv() => info!("SIGTERM: stopping"),
            _ = tokio::signal::ctrl_c() => info!("SIGINT: stopping"),
        }
        let _ = notify::stopping();
        // Wait for a change in progress to finish; the table stays so containers keep working.
        // The journal is folded into the state files, so they alone say it all.
        if let Err(e) = engine
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .fold_state()
        {
            warn!(error = %e, "could not fold the journal at stop; the next start replays it");
        }
        let _ = std::fs::remove_file(&args.socket);
        Ok::<_, anyhow::Error>(())
    })
}
