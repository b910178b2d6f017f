//! The socket's request decoding: the HTTP head, then the body as each request type.
#![no_main]

use libfuzzer_sys::fuzz_target;
use netd::api::{http, AttachRequest, CreateNetwork, GcRequest, MAX_BODY};

fn bodies(body: &[u8]) {
    let _ = serde_json::from_slice::<CreateNetwork>(body);
    let _ = serde_json::from_slice::<AttachRequest>(body);
    let _ = serde_json::from_slice::<GcRequest>(body);
}

fuzz_target!(|data: &[u8]| {
    match http::parse_head(data, MAX_BODY) {
        Ok(Some((head, off))) => {
            assert!(off <= data.len());
            let end = data.len().min(off.saturating_add(head.content_length));
            bodies(&data[off..end]);
        }
        _ => bodies(data),
    }
});
