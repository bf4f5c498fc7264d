//! Property tests: formatting a parsed address and parsing it again gives the same value,
//! and patterns derived from an address match it.

use proptest::prelude::*;
use ucxl::{Address, Pattern, Temporal};

/// A component: sometimes the literal `any` (an ordinary value in an address).
fn component() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => Just(ucxl::address::ANY.to_owned()),
        9 => "[A-Za-z0-9_-]{1,64}",
    ]
}

fn segment() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_.-]{1,24}".prop_filter("no relative segments", |s| s != "." && s != "..")
}

fn temporal() -> impl Strategy<Value = Temporal> {
    prop_oneof![
        Just(Temporal::Latest),
        Just(Temporal::First),
        any::<u32>().prop_map(Temporal::Version),
        any::<u32>().prop_map(Temporal::Back),
        any::<u32>().prop_map(Temporal::Forward),
    ]
}

fn address_text() -> impl Strategy<Value = String> {
    (
        component(),
        component(),
        component(),
        component(),
        proptest::option::of(temporal()),
        proptest::collection::vec(segment(), 0..6),
    )
        .prop_map(|(a, r, p, t, temporal, path)| {
            let mut s = format!("ucxl://{a}:{r}@{p}:{t}");
            if let Some(temporal) = temporal {
                s.push('/');
                s.push_str(&temporal.to_string());
            }
            for seg in path {
                s.push('/');
                s.push_str(&seg);
            }
            s
        })
}

proptest! {
    #[test]
    fn format_then_parse_is_identity(text in address_text()) {
        let parsed = Address::parse(&text).expect("generated addresses are valid");
        let again = Address::parse(&parsed.to_string()).expect("formatted addresses are valid");
        prop_assert_eq!(&again, &parsed);
        prop_assert_eq!(again.to_string(), parsed.to_string());
        let canonical = Address::parse(parsed.canonical()).expect("canonical form is valid");
        prop_assert_eq!(canonical.temporal(), Temporal::Latest);
        prop_assert_eq!(canonical.canonical(), parsed.canonical());
    }

    #[test]
    fn parse_never_panics(text in "\\PC{0,200}") {
        let _ = Address::parse(&text);
        let _ = Pattern::parse(&text);
    }

    #[test]
    fn near_valid_input_never_panics(text in address_text(), cut in 0usize..300, junk in "[*~^?/:@%# a-z0-9]{0,6}") {
        let mut mangled = text.clone();
        let at = cut.min(mangled.len());
        mangled.insert_str(at, &junk);
        if let Ok(a) = Address::parse(&mangled) {
            prop_assert_eq!(Address::parse(&a.to_string()).expect("round trip"), a);
        }
        let _ = Pattern::parse(&mangled);
    }

    /// An address read as a pattern matches the addresses that agree on its path and on
    /// every component, except that its `any` components (a literal in the address) are
    /// wildcards in the pattern; a literal component never matches a stored `any`.
    #[test]
    fn exact_pattern_matches_only_its_address(text in address_text(), other in address_text()) {
        let a = Address::parse(&text).expect("valid");
        let b = Address::parse(&other).expect("valid");
        let pattern = Pattern::parse(a.canonical()).expect("an address is a pattern");
        prop_assert!(pattern.matches(&a));
        let components = |x: &Address| [x.agent().to_owned(), x.role().to_owned(), x.project().to_owned(), x.task().to_owned()];
        let agree = components(&a)
            .iter()
            .zip(components(&b))
            .all(|(want, have)| want == ucxl::address::ANY || *want == have);
        prop_assert_eq!(pattern.matches(&b), agree && a.segments().eq(b.segments()));
        let concrete = [a.agent(), a.role(), a.project(), a.task()].iter().all(|c| *c != ucxl::address::ANY);
        if concrete {
            prop_assert_eq!(pattern.matches(&b), a.canonical() == b.canonical());
        }
    }

    #[test]
    fn generalised_patterns_still_match(
        text in address_text(),
        wild in proptest::collection::vec(any::<bool>(), 4),
        glob in proptest::collection::vec(0u8..4, 0..6),
    ) {
        let a = Address::parse(&text).expect("valid");
        let comps = [a.agent(), a.role(), a.project(), a.task()];
        let comps: Vec<&str> = comps.iter().zip(&wild).map(|(c, w)| if *w { "any" } else { c }).collect();
        let mut p = format!("ucxl://{}:{}@{}:{}", comps[0], comps[1], comps[2], comps[3]);
        for (i, seg) in a.segments().enumerate() {
            p.push('/');
            match glob.get(i).copied().unwrap_or(0) {
                1 => p.push('*'),
                2 => { p.push_str(&seg[..seg.len() - 1]); p.push('?'); }
                3 => { p.push('*'); p.push_str(&seg[seg.len() / 2..]); }
                _ => p.push_str(seg),
            }
        }
        let pattern = Pattern::parse(&p).expect("generalised pattern is valid");
        prop_assert!(pattern.matches(&a), "{} should match {}", p, a);
        let with_tail = Pattern::parse(&format!("{p}/**")).expect("valid");
        prop_assert!(with_tail.matches(&a));
        let everything = Pattern::parse("ucxl://any:any@any:any/**").expect("valid");
        prop_assert!(everything.matches(&a));
        // the pattern's text form parses to the same pattern
        prop_assert_eq!(Pattern::parse(&pattern.to_string()).expect("valid"), pattern);
    }
}
