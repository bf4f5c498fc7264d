//! Fuzzes `ucxl::Address::parse` (and `Pattern::parse` on the same text).
//!
//! Invariants checked for every input that parses:
//! - an address formats to at most 1024 bytes and parses back to itself;
//! - its canonical form parses, to an address with the same canonical form;
//! - a pattern formats to text that parses back to the same pattern;
//! - `Pattern::matches` never panics, and `Pattern::everything()` matches every address.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ucxl::{Address, Pattern};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };

    let address = Address::parse(text);
    if let Ok(a) = &address {
        let shown = a.to_string();
        assert!(
            shown.len() <= 1024,
            "{text:?} parsed, but formats to {} bytes: {shown:?}",
            shown.len()
        );
        assert_eq!(
            Address::parse(&shown),
            Ok(a.clone()),
            "display round trip of {text:?} (shown as {shown:?})"
        );
        let canonical = Address::parse(a.canonical())
            .unwrap_or_else(|e| panic!("canonical {:?} of {text:?} fails: {e}", a.canonical()));
        assert_eq!(
            canonical.canonical(),
            a.canonical(),
            "canonical form of {text:?} is not stable"
        );
        assert!(
            Pattern::everything().matches(a),
            "everything() does not match {text:?}"
        );
    }

    if let Ok(p) = Pattern::parse(text) {
        let shown = p.to_string();
        match Pattern::parse(&shown) {
            Ok(again) => assert_eq!(
                again, p,
                "pattern display round trip of {text:?} (shown as {shown:?})"
            ),
            Err(e) => panic!("pattern {text:?} formats to {shown:?}, which does not parse: {e}"),
        }
        if let Ok(a) = &address {
            let _ = p.matches(a);
        }
    }
});
