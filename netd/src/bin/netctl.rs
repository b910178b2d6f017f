//! netctl: manage netd's networks and look at its endpoints.
//!
//! Exit codes: 0 success, 1 refused or failed, 2 usage error, 3 netd unreachable,
//! 4 not found, 5 conflict (name, subnet or port taken; endpoints still attached).

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgAction, Parser, Subcommand, ValueEnum};
use ipnet::{Ipv4Net, Ipv6Net};

use netd::api::{Client, ClientError, CreateNetwork, ErrorKind};
use netd::model::{Endpoint, GatewayMode, Network};

#[derive(Parser)]
#[command(name = "netctl", version, about = "Manage netd's container networks")]
struct Cli {
    /// netd's API socket.
    #[arg(long, global = true, env = "NETD_SOCKET", default_value = netd::api::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Output format of listings.
    #[arg(long, global = true, value_enum, default_value_t = Format::Table)]
    format: Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Create, list, inspect and remove networks.
    #[command(subcommand)]
    Network(NetworkCmd),
    /// List attached container interfaces.
    #[command(subcommand)]
    Endpoint(EndpointCmd),
    /// Show netd's version and what it manages.
    Status,
}

#[derive(Subcommand)]
enum NetworkCmd {
    /// Create a network (and the CNI conflist that makes it usable by runtimes).
    Create(CreateArgs),
    /// List networks.
    #[command(alias = "list")]
    Ls,
    /// Show networks as JSON.
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
}

#[derive(Subcommand)]
enum EndpointCmd {
    /// List endpoints.
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
    /// IPv4 subnet (default: a free one from netd's pool).
    #[arg(long)]
    subnet: Option<Ipv4Net>,
    /// IPv4 gateway (default: the subnet's first address).
    #[arg(long)]
    gateway: Option<Ipv4Addr>,
    /// Bridge interface name (default: nd-NAME).
    #[arg(long)]
    bridge: Option<String>,
    /// Give the network IPv6 too (a ULA /64 unless --subnet6 is given).
    #[arg(long)]
    ipv6: bool,
    /// IPv6 subnet.
    #[arg(long)]
    subnet6: Option<Ipv6Net>,
    /// IPv6 gateway.
    #[arg(long)]
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
    /// Routed gateway mode (no NAT) on every address family of the network.
    #[arg(long, conflicts_with_all = ["gateway_mode_ipv4", "gateway_mode_ipv6"])]
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let client = Client::new(&cli.socket);
    match run(&client, cli.format, cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("netctl: {e}");
            let code = match &e {
                ClientError::Unreachable { .. } => 3,
                ClientError::Api(a) => match a.kind {
                    ErrorKind::NotFound => 4,
                    ErrorKind::Conflict => 5,
                    _ => 1,
                },
                _ => 1,
            };
            if matches!(e, ClientError::Unreachable { .. }) {
                eprintln!("netctl: is netd running? (systemctl status netd; or pass --socket / NETD_SOCKET)");
            }
            ExitCode::from(code)
        }
    }
}

fn print_json<T: serde::Serialize>(v: &T) {
    println!("{}", serde_json::to_string_pretty(v).expect("serializes"));
}

fn run(client: &Client, format: Format, command: Command) -> Result<(), ClientError> {
    match command {
        Command::Network(NetworkCmd::Create(a)) => {
            let mode6 = if a.routed && (a.ipv6 || a.subnet6.is_some()) {
                Some(GatewayMode::Routed)
            } else {
                a.gateway_mode_ipv6
            };
            let req = CreateNetwork {
                name: a.name,
                subnet: a.subnet,
                gateway: a.gateway,
                bridge: a.bridge,
                ipv6: a.ipv6,
                subnet6: a.subnet6,
                gateway6: a.gateway6,
                no_ipv4: a.no_ipv4,
                internal: a.internal,
                icc: a.icc,
                gateway_mode_ipv4: if a.routed {
                    Some(GatewayMode::Routed)
                } else {
                    a.gateway_mode_ipv4
                },
                gateway_mode_ipv6: mode6,
                mtu: a.mtu,
            };
            let net = client.create_network(&req)?;
            match format {
                Format::Json => print_json(&net),
                Format::Table => println!("{}", net.name),
            }
        }
        Command::Network(NetworkCmd::Ls) => {
            let nets = client.networks()?;
            match format {
                Format::Json => print_json(&nets),
                Format::Table => {
                    let eps = client.endpoints()?;
                    print_networks(&nets, &eps);
                }
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
            for name in names {
                client.remove_network(&name)?;
                if format == Format::Table {
                    println!("{name}");
                }
            }
        }
        Command::Endpoint(EndpointCmd::Ls { network }) => {
            let eps: Vec<Endpoint> = client
                .endpoints()?
                .into_iter()
                .filter(|e| network.as_ref().is_none_or(|n| &e.network == n))
                .collect();
            match format {
                Format::Json => print_json(&eps),
                Format::Table => print_endpoints(&eps),
            }
        }
        Command::Status => {
            let s = client.status()?;
            match format {
                Format::Json => print_json(&s),
                Format::Table => {
                    println!("version:          {}", s.version);
                    println!("uptime:           {}s", s.uptime_secs);
                    println!("table:            inet {}", s.table);
                    println!("networks:         {}", s.networks);
                    println!("endpoints:        {}", s.endpoints);
                    println!("published ports:  {}", s.published_ports);
                }
            }
        }
    }
    Ok(())
}

fn table(rows: Vec<Vec<String>>) {
    let cols = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..cols)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, cell)| format!("{cell:<w$}", w = widths[i]))
            .collect();
        println!("{}", line.join("   ").trim_end());
    }
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

fn print_networks(nets: &[Network], eps: &[Endpoint]) {
    let mut rows = vec![[
        "NAME",
        "BRIDGE",
        "IPV4",
        "IPV6",
        "MODE",
        "OPTIONS",
        "ENDPOINTS",
    ]
    .map(String::from)
    .to_vec()];
    for n in nets {
        let mut options = Vec::new();
        if n.internal {
            options.push("internal");
        }
        if !n.icc {
            options.push("icc=false");
        }
        let mode = match (n.subnet4.is_some(), n.subnet6.is_some()) {
            (true, true) => format!("{}/{}", n.gateway_mode4, n.gateway_mode6),
            (false, true) => n.gateway_mode6.to_string(),
            _ => n.gateway_mode4.to_string(),
        };
        rows.push(vec![
            n.name.clone(),
            n.bridge.clone(),
            opt(n.subnet4),
            opt(n.subnet6),
            mode,
            if options.is_empty() {
                "-".into()
            } else {
                options.join(",")
            },
            eps.iter()
                .filter(|e| e.network == n.name)
                .count()
                .to_string(),
        ]);
    }
    table(rows);
}

fn print_endpoints(eps: &[Endpoint]) {
    let mut rows = vec![["CONTAINER", "IFNAME", "NETWORK", "IPV4", "IPV6", "PORTS"]
        .map(String::from)
        .to_vec()];
    for e in eps {
        let ports: Vec<String> = e
            .ports
            .iter()
            .map(|p| match p.host_ip {
                Some(ip) => format!("{ip}:{}->{}/{}", p.host_port, p.container_port, p.protocol),
                None => format!("{}->{}/{}", p.host_port, p.container_port, p.protocol),
            })
            .collect();
        rows.push(vec![
            e.container_id.chars().take(12).collect(),
            e.ifname.clone(),
            e.network.clone(),
            opt(e.addr4),
            opt(e.addr6),
            if ports.is_empty() {
                "-".into()
            } else {
                ports.join(",")
            },
        ]);
    }
    table(rows);
}
