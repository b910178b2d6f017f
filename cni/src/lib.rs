//! The plugin's input parsers (environment, configuration on stdin) as a library, so that the
//! fuzz targets in `fuzz/` and the corpus replay test can drive them; the binary uses them
//! from here.

pub mod env;
pub mod error;
pub mod types;

/// Feeds one fuzz input to every parser of the plugin's input: the first line, if it starts
/// with `CNI_`, is `KEY=VALUE;...` for the environment, the rest the configuration. Used by
/// the `cni_input` fuzz target and the corpus replay below; it must never panic.
pub fn fuzz_input(data: &[u8]) {
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
}

/// Replays `fuzz/corpus/cni_input` and deterministic mutations of it through
/// [`fuzz_input`] (a plain `cargo test` needs no nightly cargo-fuzz).
#[cfg(test)]
mod corpus_replay {
    use super::fuzz_input as drive;

    #[test]
    fn cni_corpus_and_mutations_parse_without_panic() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/cni_input");
        let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
        files.sort_by_key(|e| e.file_name());
        assert!(!files.is_empty());
        let mut x: u64 = 0x853c49e6748fea9b;
        let mut runs = 0;
        for f in files {
            let data = std::fs::read(f.path()).unwrap();
            drive(&data);
            for _ in 0..500 {
                let mut m = data.clone();
                for _ in 0..3 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let at = (x as usize) % m.len().max(1);
                    match x >> 60 {
                        0..=5 if !m.is_empty() => m[at] ^= 1 << ((x >> 32) % 8),
                        6..=7 => m.truncate(at),
                        _ => m.insert(at.min(m.len()), b"\"{}[]:,\\\n0"[(x >> 40) as usize % 10]),
                    }
                }
                drive(&m);
                runs += 1;
            }
        }
        println!("RELIABILITY replay target=cni_input executions={runs}");
    }
}
