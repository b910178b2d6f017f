//! The plugin's input: the configuration on stdin, and CNI_* variables
//! (see `netd_cni_input::fuzz_input` for the input's layout).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| netd_cni_input::fuzz_input(data));
