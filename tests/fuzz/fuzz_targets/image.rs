//! Image references as pods write them (src/admission/image.rs). Properties: ../properties.rs.
#![no_main]

#[path = "../properties.rs"]
mod properties;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    properties::image_input(data);
});
