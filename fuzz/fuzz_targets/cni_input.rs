//! The plugin's input: the configuration on stdin, and CNI_* variables. The first line of the
//! input, if it starts with `CNI_`, is read as `KEY=VALUE;KEY=VALUE...` for the environment.
#![no_main]

use libfuzzer_sys::fuzz_target;
use netd_cni_input::{env, types};

fuzz_target!(|data: &[u8]| {
    let (vars, conf) = match data.iter().position(|b| *b == b'\n') {
        Some(i) if data.starts_with(b"CNI_") => (&data[..i], &data[i + 1..]),
        _ => (&b""[..], data),
    };
    let _ = types::requested_version(conf);
    if let Ok(c) = types::NetConf::parse(conf) {
        let _ = format!("{c:?}");
    }
    let vars = String::from_utf8_lossy(vars).into_owned();
    let pairs: Vec<(String, String)> = vars
        .split(';')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let _ = env::Env::from_lookup(|k| {
        pairs
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone().into())
    });
});
