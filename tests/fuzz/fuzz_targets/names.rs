//! Repository names, tags, digests, references (src/registry/names.rs) and the route grammar. Properties: ../properties.rs.
#![no_main]

#[path = "../properties.rs"]
mod properties;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    properties::names_input(data);
});
