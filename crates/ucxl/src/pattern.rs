//! Search patterns (SPEC §2): the address grammar plus `any`/`*` components and `*`, `?`,
//! `**` path globs. A pattern's temporal segment is accepted and ignored.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::address::{ANY, Address, Temporal, check_component, describe, split};
use crate::error::{AddressError, ErrorKind, Field};

/// Most path elements a pattern may have; bounds the cost of matching one address.
pub const MAX_PATTERN_SEGMENTS: usize = 32;
/// Most `**` elements a pattern may have.
pub const MAX_ANY_SEGMENTS: usize = 8;

const EXPECT_GLOB: &str = "/-separated segments of [A-Za-z0-9_.-] with * (any run within a segment), ? (one character) or ** (any number of whole segments)";

/// One path element of a pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Glob {
    /// `**`: any number (zero included) of whole segments.
    AnySegments,
    /// A segment, literal or with `*` / `?`.
    Segment(String),
}

/// A valid search pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Pattern {
    /// agent, role, project, task; `None` is the wildcard.
    components: [Option<String>; 4],
    path: Vec<Glob>,
}

fn check_glob_segment(segment: &str) -> Result<Glob, AddressError> {
    let fail = |reason: &str| {
        AddressError::new(
            ErrorKind::Invalid,
            Field::Path,
            segment,
            EXPECT_GLOB,
            reason,
        )
    };
    if segment == "**" {
        return Ok(Glob::AnySegments);
    }
    if segment == "." || segment == ".." {
        return Err(fail("relative segments are not allowed"));
    }
    if segment.contains("**") {
        return Err(fail("** must be a whole segment"));
    }
    if let Some(c) = segment
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '*' | '?')))
    {
        return Err(fail(&describe(c)));
    }
    Ok(Glob::Segment(segment.to_owned()))
}

/// Matches one segment against a glob of `*` and `?` (ASCII only, so bytes are characters).
fn segment_matches(glob: &[u8], text: &[u8]) -> bool {
    let (mut g, mut t) = (0, 0);
    // Position after the last `*` seen in the glob, and the text position it was tried at.
    let mut backtrack: Option<(usize, usize)> = None;
    while t < text.len() {
        match glob.get(g) {
            Some(b'*') => {
                backtrack = Some((g + 1, t));
                g += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                g += 1;
                t += 1;
            }
            _ => match backtrack {
                Some((after_star, tried)) => {
                    g = after_star;
                    t = tried + 1;
                    backtrack = Some((after_star, tried + 1));
                }
                None => return false,
            },
        }
    }
    glob[g..].iter().all(|&c| c == b'*')
}

impl Pattern {
    /// Parses and validates a pattern.
    ///
    /// # Errors
    /// An [`AddressError`] naming the component that failed.
    pub fn parse(input: &str) -> Result<Self, AddressError> {
        let parts = split(input, Field::Pattern)?;
        let component = |field, value: &str| {
            check_component(field, value, true)
                .map(|()| (value != ANY && value != "*").then(|| value.to_owned()))
        };
        let components = [
            component(Field::Agent, parts.agent)?,
            component(Field::Role, parts.role)?,
            component(Field::Project, parts.project)?,
            component(Field::Task, parts.task)?,
        ];
        let mut segments = parts.rest.split('/').filter(|s| !s.is_empty()).peekable();
        if let Some(first) = segments.peek() {
            // A leading segment that is a temporal form is one; `*`-globs are path; other
            // segments starting with `*`, `~` or `^` are temporal errors.
            let is_glob = first.starts_with('*') && check_glob_segment(first).is_ok();
            if Temporal::looks_temporal(first) && !is_glob {
                Temporal::parse(first)?;
                segments.next();
            }
        }
        let mut path: Vec<Glob> = Vec::new();
        for segment in segments {
            let glob = check_glob_segment(segment)?;
            // `**/**` matches what `**` matches: keep one, so the limits count real work.
            if glob == Glob::AnySegments && path.last() == Some(&Glob::AnySegments) {
                continue;
            }
            path.push(glob);
        }
        let too_many = |reason: &str| {
            AddressError::new(
                ErrorKind::Invalid,
                Field::Pattern,
                input,
                EXPECT_GLOB,
                reason,
            )
        };
        if path.len() > MAX_PATTERN_SEGMENTS {
            return Err(too_many("more than 32 path segments"));
        }
        if path.iter().filter(|g| **g == Glob::AnySegments).count() > MAX_ANY_SEGMENTS {
            return Err(too_many("more than 8 ** segments"));
        }
        Ok(Self { components, path })
    }

    /// The pattern that matches every address.
    #[must_use]
    pub fn everything() -> Self {
        Self {
            components: [None, None, None, None],
            path: vec![Glob::AnySegments],
        }
    }

    /// Whether `address` matches this pattern (its temporal segment plays no part).
    #[must_use]
    pub fn matches(&self, address: &Address) -> bool {
        let values = [
            address.agent(),
            address.role(),
            address.project(),
            address.task(),
        ];
        self.components
            .iter()
            .zip(values)
            .all(|(want, have)| want.as_deref().is_none_or(|w| w == have))
            && self.path_matches(address)
    }

    /// Segment-level matching with `**`: `reach[j]` says whether the globs seen so far can
    /// consume exactly the first `j` segments.
    fn path_matches(&self, address: &Address) -> bool {
        let count = address.segments().count();
        let mut reach = vec![false; count + 1];
        reach[0] = true;
        for glob in &self.path {
            match glob {
                Glob::AnySegments => {
                    let mut seen = false;
                    for r in &mut reach {
                        seen |= *r;
                        *r = seen;
                    }
                }
                Glob::Segment(g) => {
                    // From the last segment back, so that `reach[j - 1]` is still the
                    // previous glob's (segment j is `segments().rev()`'s counterpart).
                    for (j, segment) in (1..=count).rev().zip(address.segments().rev()) {
                        reach[j] =
                            reach[j - 1] && segment_matches(g.as_bytes(), segment.as_bytes());
                    }
                    reach[0] = false;
                }
            }
        }
        reach[count]
    }

    /// The longest prefix every matching canonical address starts with: the scheme and the
    /// leading literal components. Stores sorted by address scan only that range.
    #[must_use]
    pub fn literal_prefix(&self) -> String {
        let mut prefix = String::from("ucxl://");
        for (component, separator) in self.components.iter().zip([':', '@', ':', '/']) {
            let Some(value) = component else { break };
            prefix.push_str(value);
            if separator == '/' {
                // After the task comes either the end or `/path`: no separator is certain.
                break;
            }
            prefix.push(separator);
        }
        prefix
    }
}

/// Wildcard components print as `*` (not `any`), so the text form is never longer than
/// the input it was parsed from and always parses again within the length limit.
impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [agent, role, project, task] = self
            .components
            .each_ref()
            .map(|c| c.as_deref().unwrap_or("*"));
        write!(f, "ucxl://{agent}:{role}@{project}:{task}")?;
        for glob in &self.path {
            match glob {
                Glob::AnySegments => f.write_str("/**")?,
                Glob::Segment(s) => write!(f, "/{s}")?,
            }
        }
        Ok(())
    }
}

impl FromStr for Pattern {
    type Err = AddressError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for Pattern {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(s: &str) -> Pattern {
        Pattern::parse(s).unwrap_or_else(|e| panic!("{s} should parse: {e}"))
    }
    fn address(s: &str) -> Address {
        Address::parse(s).unwrap_or_else(|e| panic!("{s} should parse: {e}"))
    }
    fn matches(p: &str, a: &str) -> bool {
        pattern(p).matches(&address(a))
    }

    #[test]
    fn wildcard_components() {
        assert!(matches("ucxl://any:any@any:any/x", "ucxl://a:b@c:d/x"));
        assert!(matches("ucxl://*:*@*:*/x", "ucxl://a:b@c:d/x"));
        assert!(matches("ucxl://a:any@c:*/x", "ucxl://a:b@c:d/x"));
        assert!(!matches("ucxl://z:any@c:*/x", "ucxl://a:b@c:d/x"));
        assert!(!matches("ucxl://A:any@c:*/x", "ucxl://a:b@c:d/x"));
    }

    #[test]
    fn a_stored_any_is_not_a_wildcard() {
        let shared = "ucxl://any:any@p:t/shared/ctx";
        assert!(
            !matches("ucxl://claude:any@p:t/**", shared),
            "a literal component does not match a stored any"
        );
        assert!(!matches("ucxl://claude:architect@p:t/shared/ctx", shared));
        assert!(!matches("ucxl://any:architect@p:t/**", shared));
        assert!(
            !matches("ucxl://ANY:any@p:t/**", shared),
            "ANY is a literal, not the wildcard"
        );
        assert!(matches("ucxl://any:any@p:t/**", shared));
        assert!(matches("ucxl://*:*@*:*/**", shared));
        assert!(matches(
            "ucxl://claude:any@p:t/**",
            "ucxl://claude:any@p:t/shared/ctx"
        ));
        assert!(
            matches(
                "ucxl://any:any@p:t/shared/ctx",
                "ucxl://claude:dev@p:t/shared/ctx"
            ),
            "in a pattern any stays the wildcard"
        );
    }

    #[test]
    fn path_globs() {
        let a = "ucxl://a:b@c:d/decisions/protocol.json";
        assert!(matches("ucxl://a:b@c:d/decisions/protocol.json", a));
        assert!(matches("ucxl://a:b@c:d/decisions/*", a));
        assert!(matches("ucxl://a:b@c:d/*/*.json", a));
        assert!(matches("ucxl://a:b@c:d/decisions/protoco?.json", a));
        assert!(matches("ucxl://a:b@c:d/decisions/*o*o*.json", a));
        assert!(!matches("ucxl://a:b@c:d/decisions/?.json", a));
        assert!(
            !matches("ucxl://a:b@c:d/*", a),
            "* stays within one segment"
        );
        assert!(matches("ucxl://a:b@c:d/**", a));
        assert!(matches("ucxl://a:b@c:d/**/protocol.json", a));
        assert!(
            matches("ucxl://a:b@c:d/decisions/**/protocol.json", a),
            "** may match zero segments"
        );
        assert!(matches("ucxl://a:b@c:d/decisions/**", a));
        assert!(matches("ucxl://a:b@c:d/decisions/protocol.json/**", a));
        assert!(!matches("ucxl://a:b@c:d/**/decisions", a));
        assert!(matches("ucxl://a:b@c:d/**", "ucxl://a:b@c:d"));
        assert!(matches("ucxl://a:b@c:d", "ucxl://a:b@c:d"));
        assert!(
            !matches("ucxl://a:b@c:d", a),
            "an empty pattern path is the empty path"
        );
        assert!(matches("ucxl://a:b@c:d/**/**/x", "ucxl://a:b@c:d/p/q/x"));
        assert!(!matches("ucxl://a:b@c:d/x*", "ucxl://a:b@c:d/y"));
        assert!(matches("ucxl://a:b@c:d/*", "ucxl://a:b@c:d/y"));
        assert!(
            !matches("ucxl://a:b@c:d/*", "ucxl://a:b@c:d"),
            "* needs a segment"
        );
    }

    #[test]
    fn temporal_segment_is_ignored_but_validated() {
        assert!(matches("ucxl://a:b@c:d/*~3/x", "ucxl://a:b@c:d/x"));
        assert!(matches("ucxl://a:b@c:d/~~2/x", "ucxl://a:b@c:d/x"));
        assert!(matches("ucxl://a:b@c:d/*^/x", "ucxl://a:b@c:d/x"));
        let e = Pattern::parse("ucxl://a:b@c:d/~~x/y").expect_err("bad temporal");
        assert_eq!(e.kind, ErrorKind::TemporalInvalid);
        // a leading `*` glob is a path glob, not a temporal segment
        assert!(matches("ucxl://a:b@c:d/*/y", "ucxl://a:b@c:d/x/y"));
        assert!(matches("ucxl://a:b@c:d/**", "ucxl://a:b@c:d/x/y"));
    }

    #[test]
    fn pattern_errors_name_the_component() {
        let field = |s: &str| Pattern::parse(s).expect_err(s).field;
        assert_eq!(field("ucxl://a b:b@c:d"), Field::Agent);
        assert_eq!(field("ucxl://a:b@c:d/a**"), Field::Path);
        assert_eq!(field("ucxl://a:b@c:d/x/.."), Field::Path);
        assert_eq!(field("ucxl://a:b@c:d/x[1]"), Field::Path);
        assert_eq!(field("ucxl://a:b@c"), Field::Task);
        assert_eq!(field("nope"), Field::Scheme);
        assert_eq!(
            field(&format!("ucxl://a:b@c:d/{}", "x".repeat(1100))),
            Field::Pattern
        );
    }

    #[test]
    fn display_normalises_wildcards() {
        assert_eq!(
            pattern("UCXL://*:b@any:d/*~1//x/**/").to_string(),
            "ucxl://*:b@*:d/x/**"
        );
        assert_eq!(Pattern::everything().to_string(), "ucxl://*:*@*:*/**");
    }

    #[test]
    fn display_of_star_wildcards_fits_the_limit() {
        // Found by fuzzing: `*` printed as `any` grew past 1024 bytes.
        let long = format!("ucxl://*:*@*:*/{}", "a".repeat(1002));
        assert!(long.len() <= 1024);
        let p = pattern(&long);
        assert_eq!(p.to_string(), long);
        assert_eq!(pattern(&p.to_string()), p);
    }

    #[test]
    fn display_is_never_longer_than_the_input() {
        let long = format!("ucxl://any:any@any:any/{}", "x".repeat(1000));
        let p = pattern(&long);
        assert!(p.to_string().len() <= long.len());
        assert_eq!(pattern(&p.to_string()), p);
    }

    #[test]
    fn size_limits_and_collapsed_double_stars() {
        let collapsed = pattern("ucxl://a:b@c:d/**/**/**/x");
        assert_eq!(collapsed.to_string(), "ucxl://a:b@c:d/**/x");
        let many = format!("ucxl://a:b@c:d/{}", ["x"; 33].join("/"));
        assert_eq!(
            Pattern::parse(&many).expect_err("too long").field,
            Field::Pattern
        );
        assert!(Pattern::parse(&format!("ucxl://a:b@c:d/{}", ["x"; 32].join("/"))).is_ok());
        let stars = format!("ucxl://a:b@c:d/{}", ["**/x"; 9].join("/"));
        assert_eq!(
            Pattern::parse(&stars).expect_err("too many **").field,
            Field::Pattern
        );
    }

    #[test]
    fn literal_prefixes() {
        assert_eq!(
            pattern("ucxl://a:b@c:d/x").literal_prefix(),
            "ucxl://a:b@c:d"
        );
        assert_eq!(
            pattern("ucxl://a:b@c:any/x").literal_prefix(),
            "ucxl://a:b@c:"
        );
        assert_eq!(pattern("ucxl://a:any@c:d/x").literal_prefix(), "ucxl://a:");
        assert_eq!(pattern("ucxl://any:b@c:d").literal_prefix(), "ucxl://");
        let a = address("ucxl://a:b@c:d/x");
        for p in [
            "ucxl://a:b@c:d/x",
            "ucxl://a:b@c:any/x",
            "ucxl://a:any@c:d/x",
        ] {
            assert!(a.canonical().starts_with(&pattern(p).literal_prefix()));
        }
    }
}
