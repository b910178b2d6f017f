//! nf_tables notifications and element dumps as the self-healing monitor parses them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use netd::nft::monitor::{parse_elems, parse_events};

fuzz_target!(|data: &[u8]| {
    for e in parse_events(data) {
        let _ = e.to_string();
        let _ = e.touches("netd");
    }
    let _ = parse_elems(data);
});
