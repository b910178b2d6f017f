//! netd-cni: the CNI plugin that attaches containers to netd networks.
//!
//! Reads CNI_* and the configuration on stdin, runs the command, and prints the result or a
//! CNI error object on stdout (where libcni looks first); stderr carries only notes for logs.
//!
//! A conflist entry needs only the type; `network` defaults to the conflist's name and
//! `socket` to netd's default:
//!
//! ```json
//! {"type": "netd-cni", "network": "web", "socket": "/run/netd/netd.sock",
//!  "capabilities": {"portMappings": true, "ips": true, "mac": true}}
//! ```
//!
//! With `"subnets": ["10.244.1.0/24"]` (and optionally `gatewayModeIpv4`/`gatewayModeIpv6`)
//! netd creates the network on the first ADD if it does not exist (docs/kubernetes.md).
//!
//! Error codes are listed in `error.rs`.

// The installed plugin is built for musl (scripts/build-release.sh): glibc's start-up asks the
// CPU about its caches with `CPUID`, which traps to the hypervisor on a VM, and costs a static
// glibc build about 0.3 ms of CPU per exec, on every ADD and DEL. musl's own allocator would
// give that back and more (page faults, allocator time); dlmalloc keeps freed memory for reuse
// within the process, as glibc's does (docs/benchmarks.md, fourth round).
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOC: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

mod commands;
mod links;
mod shaping;

// The input parsers live in the library target so fuzzing can reach them.
use netd_cni_input::{env, error, types};

use std::io::{IsTerminal, Read};
use std::path::Path;
use std::process::ExitCode;

use error::PluginError;

/// Configurations are a few KiB; the bound keeps a runaway writer from exhausting memory.
const MAX_INPUT: u64 = 8 << 20;

fn read_input(command: Option<env::Command>) -> Result<Vec<u8>, PluginError> {
    let stdin = std::io::stdin();
    // VERSION needs no input; someone typing the command by hand should not hang.
    if command == Some(env::Command::Version) && stdin.is_terminal() {
        return Ok(Vec::new());
    }
    let mut buf = Vec::new();
    stdin
        .lock()
        .take(MAX_INPUT + 1)
        .read_to_end(&mut buf)
        .map_err(|e| PluginError::Io {
            msg: "cannot read the network configuration from stdin".into(),
            details: e.to_string(),
        })?;
    if buf.len() as u64 > MAX_INPUT {
        return Err(PluginError::decode(
            format!("the network configuration is larger than {MAX_INPUT} bytes"),
            String::new(),
        ));
    }
    Ok(buf)
}

fn main() -> ExitCode {
    let env = env::Env::from_process();
    let (input, input_err) = match read_input(env.as_ref().ok().map(|e| e.command)) {
        Ok(input) => (input, None),
        Err(e) => (Vec::new(), Some(e)),
    };
    let outcome = env.and_then(|env| {
        if let Some(e) = input_err {
            return Err(e);
        }
        let connect =
            |path: &Path| -> Box<dyn commands::Netd> { Box::new(netd_api::Client::new(path)) };
        commands::run(&env, &input, &connect, &links::SystemLinks::default())
    });
    match outcome {
        Ok(out) => {
            if let Some(out) = out {
                println!("{out}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            // Looked up only for an error reply: it reads the whole input a second time.
            let version = types::requested_version(&input)
                .unwrap_or_else(|| types::CniVersion::LATEST.as_str().to_string());
            let reply = types::ErrorReply::new(&version, &e);
            println!(
                "{}",
                serde_json::to_string(&reply).expect("errors serialise")
            );
            eprintln!("netd-cni: {e} (code {})", e.code());
            ExitCode::FAILURE
        }
    }
}
