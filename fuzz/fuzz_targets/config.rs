//! Config loading: any text gives a config or located errors, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Secret and certificate files are read while validating; device and
    // process files could block or never end, which is not what this
    // target looks for.
    if ["/dev", "/proc", "/sys"].iter().any(|p| text.contains(p)) {
        return;
    }
    match drowsy::config::parse(Path::new("/nonexistent/drowsy.yml"), text) {
        Ok(_) => {}
        Err(errors) => {
            assert!(!errors.0.is_empty());
            let _ = errors.to_string();
        }
    }
});
