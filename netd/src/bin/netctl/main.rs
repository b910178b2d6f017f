//! netctl: manage netd's networks and look at its endpoints.
//!
//! Exit codes: 0 success, 1 refused or failed (doctor: a check failed), 2 usage error,
//! 3 netd unreachable, 4 not found, 5 conflict (name, subnet or port taken; endpoints still
//! attached).

mod doctor;
mod plan;
mod render;

use std::io::Write;
use std::net::{IpAddr, Ipv6Addr};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgAction, CommandFactory, Parser, Subcommand, ValueEnum};
use ipnet::{IpNet, Ipv6Net};

use netd::api::{Client, ClientError, CreateNetwork, ErrorKind};
use netd::model::{Endpoint, GatewayMode};

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  refused or failed (netctl doctor: a check failed)
  2  usage error
  3  netd is unreachable
  4  not found
  5  conflict (name, subnet or port taken; endpoints still attached)";

#[derive(Parser)]
#[command(
    name = "netctl",
    version,
    about = "Manage netd's container networks",
    after_help = EXIT_CODES
)]
struct Cli {
    /// netd's API socket.
    #[arg(long, global = true, env = "NETD_SOCKET", default_value = netd::api::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Output format: readable tables, or JSON for scripts.
    #[arg(long, global = true, value_enum, default_value_t = Format::Table)]
    format: Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Create, list, inspect, remove and prune networks.
    #[command(subcommand)]
    Network(NetworkCmd),
    /// List attached container interfaces.
    #[command(subcommand)]
    Endpoint(EndpointCmd),
    /// Show netd's version, uptime, table and what it manages.
    Status,
    /// Check the host for what stops container traffic, and say how to fix each finding.
    Doctor(doctor::DoctorArgs),
    /// Print the table netd would write (nft list form), or --diff it against the live table.
    Plan(plan::PlanArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print netctl's man page, or write one page per command into a directory.
    Man {
        /// Write netctl.1, netctl-network.1, ... into this directory.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum NetworkCmd {
    /// Create a network (and the CNI conflist that makes it usable by runtimes).
    Create(CreateArgs),
    /// List networks.
    #[command(alias = "list")]
    Ls,
    /// Show networks in full (JSON).
    Inspect {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove networks (refused while endpoints are attached).
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove every network that has no endpoints.
    Prune,
}

#[derive(Subcommand)]
enum EndpointCmd {
    /// List endpoints: container, network, addresses, published ports.
    #[command(alias = "list")]
    Ls {
        /// Only endpoints of this network.
        #[arg(long)]
        network: Option<String>,
    },
}

#[derive(clap::Args)]
struct CreateArgs {
    name: String,
    /// Subnet, IPv4 or IPv6; give it once per family (default IPv4: a free one from netd's
    /// pool; default IPv6 with --ipv6: a ULA /64).
    #[arg(long, value_name = "CIDR", action = ArgAction::Append)]
    subnet: Vec<IpNet>,
    /// Gateway, IPv4 or IPv6; once per family (default: the subnet's first address).
    #[arg(long, value_name = "IP", action = ArgAction::Append)]
    gateway: Vec<IpAddr>,
    /// Bridge interface name (default: nd-NAME).
    #[arg(long)]
    bridge: Option<String>,
    /// Give the network IPv6 too (a ULA /64 unless an IPv6 --subnet is given).
    #[arg(long)]
    ipv6: bool,
    /// IPv6 subnet (same as an IPv6 --subnet).
    #[arg(long, value_name = "CIDR")]
    subnet6: Option<Ipv6Net>,
    /// IPv6 gateway (same as an IPv6 --gateway).
    #[arg(long, value_name = "IP")]
    gateway6: Option<Ipv6Addr>,
    /// No IPv4: an IPv6-only network (needs --ipv6).
    #[arg(long)]
    no_ipv4: bool,
    /// No traffic in or out of the network, only between its containers.
    #[arg(long)]
    internal: bool,
    /// Inter-container communication on the network (--icc=false isolates containers).
    #[arg(long, action = ArgAction::Set, value_name = "BOOL")]
    icc: Option<bool>,
    /// Routed gateway mode (no NAT) for IPv6; IPv4 stays nat unless --gateway-mode-ipv4 routed.
    #[arg(long, conflicts_with = "gateway_mode_ipv6")]
    routed: bool,
    /// Gateway mode for IPv4: nat, routed or isolated.
    #[arg(long, value_name = "MODE")]
    gateway_mode_ipv4: Option<GatewayMode>,
    /// Gateway mode for IPv6: nat, routed or isolated.
    #[arg(long, value_name = "MODE")]
    gateway_mode_ipv6: Option<GatewayMode>,
    /// MTU of the bridge and the container interfaces.
    #[arg(long)]
    mtu: Option<u32>,
    /// cniVersion of the network's conflist: 1.0.0 for Podman 4 and containerd 1.6/1.7, 1.1.0
    /// for containerd 2.x (GC, STATUS) (default: netd's cni_version, 1.0.0 unless configured).
    #[arg(long, value_name = "VERSION", value_parser = clap::builder::PossibleValuesParser::new(netd::conflist::CNI_VERSIONS))]
    cni_version: Option<String>,
}

/// What a failed command says and which exit code it maps to.
pub enum Failure {
    Client(ClientError),
    /// A local failure (writing a file, a doctor check) with exit code 1.
    Other(String),
    /// Already reported on stdout (doctor findings): exit 1 without another message.
    Silent,
    /// Options that contradict each other, found after parsing: exit 2 like clap's errors.
    Usage(String),
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        Failure::Client(e)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let client = Client::new(&cli.socket);
    match run(&client, cli.format, cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Silent) => ExitCode::from(1),
        Err(Failure::Usage(m)) => {
            eprintln!("netctl: {m}");
            ExitCode::from(2)
        }
        Err(Failure::Other(m)) => {
            eprintln!("netctl: {m}");
            ExitCode::from(1)
        }
        Err(Failure::Client(e)) => {
            eprintln!("netctl: {e}");
            let code = match &e {
                ClientError::Unreachable { source, .. } => {
                    eprintln!("netctl: {}", unreachable_hint(source));
                    3
                }
                ClientError::Api(a) => match a.kind {
                    ErrorKind::NotFound => {
                        if !a.message.contains("netctl") {
                            eprintln!("netctl: `netctl network ls` lists the networks, `netctl endpoint ls` the endpoints");
                        }
                        4
                    }
                    ErrorKind::Conflict => 5,
                    _ => 1,
                },
                _ => 1,
            };
            ExitCode::from(code)
        }
    }
}

/// What to do when the socket does not answer, by the reason it did not.
pub fn unreachable_hint(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::PermissionDenied => {
            "the socket refused you: run as root, or join the socket's group (socket_group in /etc/netd/netd.toml; then log in again)"
        }
        _ => "is netd running? (systemctl status netd; journalctl -u netd) Or point netctl at its socket with --socket / NETD_SOCKET",
    }
}

pub fn print_json<T: serde::Serialize>(v: &T) {
    println!("{}", serde_json::to_string_pretty(v).expect("serializes"));
}

fn run(client: &Client, format: Format, command: Command) -> Result<(), Failure> {
    match command {
        Command::Network(NetworkCmd::Create(a)) => {
            let net = client.create_network(&create_request(a)?)?;
            match format {
                Format::Json => print_json(&net),
                Format::Table => print!("{}", render::created(&net)),
            }
        }
        Command::Network(NetworkCmd::Ls) => {
            let nets = client.networks()?;
            match format {
                Format::Json => print_json(&nets),
                Format::Table => print!("{}", render::networks(&nets, &client.endpoints()?)),
            }
        }
        Command::Network(NetworkCmd::Inspect { names }) => {
            let nets = names
                .iter()
                .map(|n| client.network(n))
                .collect::<Result<Vec<_>, _>>()?;
            if nets.len() == 1 {
                print_json(&nets[0]);
            } else {
                print_json(&nets);
            }
        }
        Command::Network(NetworkCmd::Rm { names }) => {
            let mut removed = Vec::new();
            for name in names {
                let result = client.remove_network(&name);
                if let Err(e) = result {
                    // Say what was removed before the failure, in the requested format.
                    if format == Format::Json && !removed.is_empty() {
                        print_json(&removed);
                    }
                    return Err(e.into());
                }
                if format == Format::Table {
                    println!("{name}");
                }
                removed.push(name);
            }
            if format == Format::Json {
                print_json(&removed);
            }
        }
        Command::Network(NetworkCmd::Prune) => {
            let eps = client.endpoints()?;
            let mut removed = Vec::new();
            for net in client.networks()? {
                if eps.iter().any(|e| e.network == net.name) {
                    continue;
                }
                match client.remove_network(&net.name) {
                    Ok(_) => removed.push(net.name),
                    // Attached to or removed meanwhile by someone else: not this prune's to remove.
                    Err(ClientError::Api(a))
                        if matches!(a.kind, ErrorKind::Conflict | ErrorKind::NotFound) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            match format {
                Format::Json => print_json(&removed),
                Format::Table => {
                    for name in &removed {
                        println!("{name}");
                    }
                }
            }
        }
        Command::Endpoint(EndpointCmd::Ls { network }) => {
            if let Some(n) = &network {
                client.network(n)?;
            }
            let eps: Vec<Endpoint> = client
                .endpoints()?
                .into_iter()
                .filter(|e| network.as_ref().is_none_or(|n| &e.network == n))
                .collect();
            match format {
                Format::Json => print_json(&eps),
                Format::Table => print!("{}", render::endpoints(&eps)),
            }
        }
        Command::Status => {
            let s = client.status()?;
            match format {
                Format::Json => print_json(&s),
                Format::Table => print!("{}", render::status(&s, client.socket_path())),
            }
        }
        Command::Doctor(args) => {
            let findings = doctor::run(client, &args);
            match format {
                Format::Json => print_json(&findings),
                Format::Table => print!("{}", doctor::render(&findings)),
            }
            if findings.iter().any(|f| f.status == doctor::Level::Fail) {
                return Err(Failure::Silent);
            }
        }
        Command::Completion { shell } => {
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "netctl", &mut std::io::stdout());
        }
        Command::Plan(args) => plan::run(client, args)?,
        Command::Man { dir } => man(dir).map_err(|e| Failure::Other(format!("man: {e}")))?,
    }
    Ok(())
}

/// At most one value per address family, from the repeatable option and the IPv6-only one.
fn per_family<T4, T6>(
    what: &str,
    values: impl IntoIterator<Item = Result<T4, T6>>,
    extra6: Option<T6>,
) -> Result<(Option<T4>, Option<T6>), Failure> {
    let (mut v4, mut v6) = (None, extra6);
    for v in values {
        let (slot_taken, family) = match v {
            Ok(a) => (v4.replace(a).is_some(), "IPv4"),
            Err(b) => (v6.replace(b).is_some(), "IPv6"),
        };
        if slot_taken {
            return Err(Failure::Usage(format!(
                "--{what} was given twice for {family}; a network has at most one {what} per family"
            )));
        }
    }
    Ok((v4, v6))
}

fn create_request(a: CreateArgs) -> Result<CreateNetwork, Failure> {
    let (subnet, subnet6) = per_family(
        "subnet",
        a.subnet.iter().map(|n| match n {
            IpNet::V4(n) => Ok(*n),
            IpNet::V6(n) => Err(*n),
        }),
        a.subnet6,
    )?;
    let (gateway, gateway6) = per_family(
        "gateway",
        a.gateway.iter().map(|g| match g {
            IpAddr::V4(g) => Ok(*g),
            IpAddr::V6(g) => Err(*g),
        }),
        a.gateway6,
    )?;
    let ipv6 = a.ipv6 || subnet6.is_some() || gateway6.is_some();
    // `--routed` is Docker's direct-routing setup: IPv6 routed, IPv4 still NATed. A private
    // IPv4 subnet sent out unmasqueraded breaks on an ordinary host, so routing IPv4 takes
    // its own explicit option.
    if a.routed && !ipv6 {
        return Err(Failure::Usage(
            "--routed sets the IPv6 gateway mode, and this network has no IPv6; add --ipv6, or use --gateway-mode-ipv4 routed for a routed IPv4 network".into(),
        ));
    }
    let mode6 = if a.routed {
        Some(GatewayMode::Routed)
    } else {
        a.gateway_mode_ipv6
    };
    Ok(CreateNetwork {
        name: a.name,
        subnet,
        gateway,
        bridge: a.bridge,
        ipv6,
        subnet6,
        gateway6,
        no_ipv4: a.no_ipv4,
        internal: a.internal,
        icc: a.icc,
        gateway_mode_ipv4: a.gateway_mode_ipv4,
        gateway_mode_ipv6: mode6,
        mtu: a.mtu,
        cni_version: a.cni_version,
    })
}

/// netctl.1 on stdout, or a page per command (netctl-network-create.1, ...) in `dir`.
fn man(dir: Option<PathBuf>) -> std::io::Result<()> {
    let cmd = Cli::command();
    let Some(dir) = dir else {
        let mut out = Vec::new();
        clap_mangen::Man::new(cmd).render(&mut out)?;
        return std::io::stdout().write_all(&out);
    };
    std::fs::create_dir_all(&dir)?;
    fn write_pages(cmd: clap::Command, name: String, dir: &std::path::Path) -> std::io::Result<()> {
        let cmd = cmd.name(name.clone()).bin_name(name.replace('-', " "));
        let mut out = Vec::new();
        clap_mangen::Man::new(cmd.clone()).render(&mut out)?;
        std::fs::write(dir.join(format!("{name}.1")), out)?;
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            write_pages(sub.clone(), format!("{name}-{}", sub.get_name()), dir)?;
        }
        Ok(())
    }
    write_pages(cmd, "netctl".into(), &dir)
}
