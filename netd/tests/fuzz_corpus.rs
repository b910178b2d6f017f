//! Replays the fuzz corpus (`fuzz/corpus/`) through the decoders the fuzz targets drive, and
//! a few thousand deterministic mutations of it, so that a plain `cargo test` catches a
//! regression without nightly cargo-fuzz. Any panic fails the test.

use std::path::PathBuf;

use netd::api::{http, AttachRequest, CreateNetwork, GcRequest, MAX_BODY};
use netd::nft::monitor::{parse_elems, parse_events};

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "empty corpus {}", dir.display());
    out
}

/// Deterministic mutations: bit flips, truncations, byte insertions and splices.
fn mutations(seed: &[u8], n: usize, rng: &mut u64) -> Vec<Vec<u8>> {
    let mut next = move || {
        *rng ^= *rng << 13;
        *rng ^= *rng >> 7;
        *rng ^= *rng << 17;
        *rng
    };
    (0..n)
        .map(|_| {
            let mut m = seed.to_vec();
            for _ in 0..1 + next() % 4 {
                let len = m.len().max(1);
                let at = (next() as usize) % len;
                match next() % 4 {
                    0 if !m.is_empty() => m[at] ^= 1 << (next() % 8),
                    1 => m.truncate(at),
                    2 => m.insert(at.min(m.len()), next() as u8),
                    _ => {
                        let b = [b'"', b'{', b'}', b'[', b'\0', b'\r', b'\n', b':', 0xff];
                        m.insert(at.min(m.len()), b[(next() % b.len() as u64) as usize]);
                    }
                }
            }
            m
        })
        .collect()
}

fn api_request(data: &[u8]) {
    let bodies = |body: &[u8]| {
        let _ = serde_json::from_slice::<CreateNetwork>(body);
        let _ = serde_json::from_slice::<AttachRequest>(body);
        let _ = serde_json::from_slice::<GcRequest>(body);
    };
    match http::parse_head(data, MAX_BODY) {
        Ok(Some((head, off))) => {
            assert!(off <= data.len());
            let end = data.len().min(off.saturating_add(head.content_length));
            bodies(&data[off..end]);
        }
        _ => bodies(data),
    }
}

fn nft_events(data: &[u8]) {
    for e in parse_events(data) {
        let _ = e.to_string();
        let _ = e.touches("netd");
    }
    let _ = parse_elems(data);
}

const MUTATIONS: usize = 500;

#[test]
fn api_corpus_and_mutations_decode_without_panic() {
    let mut rng = 0x2545f4914f6cdd1d;
    let mut runs = 0;
    for (name, data) in corpus("api_request") {
        api_request(&data);
        for m in mutations(&data, MUTATIONS, &mut rng) {
            api_request(&m);
            runs += 1;
        }
        // The seeds that are well-formed requests parse as such.
        if name.ends_with(".http") && !name.starts_with("bad") && !name.starts_with("chunked") {
            assert!(
                matches!(http::parse_head(&data, MAX_BODY), Ok(Some(_))),
                "{name}"
            );
        }
    }
    println!("RELIABILITY replay target=api_request executions={runs}");
}

#[test]
fn nft_corpus_and_mutations_parse_without_panic() {
    let mut rng = 0x9e3779b97f4a7c15;
    let mut runs = 0;
    for (name, data) in corpus("nft_events") {
        nft_events(&data);
        for m in mutations(&data, MUTATIONS, &mut rng) {
            nft_events(&m);
            runs += 1;
        }
        if name == "deltable.bin" {
            let ev = parse_events(&data);
            assert!(ev[0].touches("netd"), "{ev:?}");
        }
    }
    println!("RELIABILITY replay target=nft_events executions={runs}");
}
