//! Fuzzes `ucxl::Pattern::matches`: the input is `PATTERN\nADDRESS` (split at the first
//! newline; no newline means an empty address text).
//!
//! Invariants checked:
//! - a pattern formats to text that parses back to the same pattern;
//! - `matches` never panics, and gives the same answer for the re-parsed pattern;
//! - an address's text (if it has at most `MAX_PATTERN_SEGMENTS` path segments) is a valid
//!   pattern, and that pattern matches the address.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ucxl::pattern::MAX_PATTERN_SEGMENTS;
use ucxl::{Address, Pattern};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (pattern_text, address_text) = text.split_once('\n').unwrap_or((text, ""));

    let pattern = Pattern::parse(pattern_text);
    let address = Address::parse(address_text);

    if let Ok(p) = &pattern {
        let shown = p.to_string();
        match Pattern::parse(&shown) {
            Ok(again) => {
                assert_eq!(
                    &again, p,
                    "pattern display round trip of {pattern_text:?} (shown as {shown:?})"
                );
                if let Ok(a) = &address {
                    assert_eq!(
                        again.matches(a),
                        p.matches(a),
                        "{pattern_text:?} and its display {shown:?} disagree on {address_text:?}"
                    );
                }
            }
            Err(e) => {
                panic!("pattern {pattern_text:?} formats to {shown:?}, which does not parse: {e}")
            }
        }
    }

    // An address's text is also a pattern, and that pattern matches the address. Patterns
    // take at most MAX_PATTERN_SEGMENTS path elements (a bound on matching cost), so longer
    // addresses are exempt.
    if let Ok(a) = &address
        && a.segments().len() <= MAX_PATTERN_SEGMENTS
    {
        let shown = a.to_string();
        let own = Pattern::parse(&shown)
            .unwrap_or_else(|e| panic!("address {shown:?} is not a valid pattern: {e}"));
        assert!(
            own.matches(a),
            "{shown:?} as a pattern does not match itself"
        );
    }
});
