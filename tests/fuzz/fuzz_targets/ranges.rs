//! The Range and Content-Range parsers (src/registry/ranges.rs). Properties: ../properties.rs.
#![no_main]

#[path = "../properties.rs"]
mod properties;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    properties::ranges_input(data);
});
