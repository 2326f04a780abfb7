//! The manifest parser (src/registry/manifest.rs). Properties: ../properties.rs.
#![no_main]

#[path = "../properties.rs"]
mod properties;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    properties::manifest_input(data);
});
