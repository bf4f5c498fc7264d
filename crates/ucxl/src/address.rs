//! UCXL addresses (SPEC §2): parsing, validation, canonical form and formatting.
//!
//! `ucxl://AGENT:ROLE@PROJECT:TASK[/TEMPORAL][/PATH]`. An [`Address`] can only hold a valid
//! address; its [`Address::canonical`] form (no temporal segment) is the storage key.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{AddressError, ErrorKind, Field};

/// Longest accepted address, in bytes.
pub const MAX_ADDRESS_BYTES: usize = 1024;
/// Longest accepted agent, role, project or task, in characters.
pub const MAX_COMPONENT_CHARS: usize = 64;
/// The literal that stands for "any value" in a component of a search pattern. In an
/// address it is an ordinary value and an exact key, as in BZZZ (whose documentation keeps
/// shared context at `ucxl://any:any@...`); only the lower-case spelling is special.
pub const ANY: &str = "any";

pub(crate) const EXPECT_COMPONENT: &str = "[A-Za-z0-9_-]{1,64} or any";
pub(crate) const EXPECT_SEGMENT: &str = "/-separated segments of [A-Za-z0-9_.-], not . or ..";
pub(crate) const EXPECT_TEMPORAL: &str =
    "*^, *~, *~N, ~~N or ^^N with N a decimal integer 0..=4294967295";
/// How every canonical address starts.
const SCHEME: &str = "ucxl://";
pub(crate) const EXPECT_ADDRESS: &str = "ucxl://AGENT:ROLE@PROJECT:TASK[/TEMPORAL][/PATH]";

/// Which version of an address's history a read selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Temporal {
    /// `*^`: the latest version (also what an absent segment means).
    #[default]
    Latest,
    /// `*~`: the first version.
    First,
    /// `*~N`: version N, 1-based.
    Version(u32),
    /// `~~N`: N versions back from the latest (`~~0` is the latest).
    Back(u32),
    /// `^^N`: N versions forward from the first (`^^0` is the first).
    Forward(u32),
}

impl Temporal {
    /// True when `segment` is meant as a temporal segment (it starts with `*`, `~` or `^`).
    #[must_use]
    pub fn looks_temporal(segment: &str) -> bool {
        segment.starts_with(['*', '~', '^'])
    }

    /// Parses a temporal segment; anything but the five documented forms is an error.
    ///
    /// # Errors
    /// `UCXL-400-TEMPORAL_INVALID` naming the segment.
    pub fn parse(segment: &str) -> Result<Self, AddressError> {
        let invalid = |reason: &str| {
            AddressError::new(
                ErrorKind::TemporalInvalid,
                Field::Temporal,
                segment,
                EXPECT_TEMPORAL,
                reason,
            )
        };
        let number = |digits: &str| -> Result<u32, AddressError> {
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(invalid("N must be a decimal integer"));
            }
            digits
                .parse::<u32>()
                .map_err(|_| invalid("N is larger than 4294967295"))
        };
        match segment {
            "*^" => Ok(Self::Latest),
            "*~" => Ok(Self::First),
            _ => {
                if let Some(n) = segment.strip_prefix("*~") {
                    // `*~0` is well-formed; there is no version 0, so reads find nothing.
                    number(n).map(Self::Version)
                } else if let Some(n) = segment.strip_prefix("~~") {
                    number(n).map(Self::Back)
                } else if let Some(n) = segment.strip_prefix("^^") {
                    number(n).map(Self::Forward)
                } else {
                    Err(invalid("not a temporal segment"))
                }
            }
        }
    }

    /// Selects a 1-based version number out of `count` versions, if there is one.
    #[must_use]
    pub fn select(self, count: usize) -> Option<usize> {
        if count == 0 {
            return None;
        }
        let n = |v: u32| usize::try_from(v).ok();
        let chosen = match self {
            Self::Latest => Some(count),
            Self::First => Some(1),
            Self::Version(v) => n(v),
            Self::Back(v) => n(v).and_then(|v| count.checked_sub(v)),
            Self::Forward(v) => n(v).and_then(|v| v.checked_add(1)),
        }?;
        (1..=count).contains(&chosen).then_some(chosen)
    }
}

impl fmt::Display for Temporal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Latest => f.write_str("*^"),
            Self::First => f.write_str("*~"),
            Self::Version(n) => write!(f, "*~{n}"),
            Self::Back(n) => write!(f, "~~{n}"),
            Self::Forward(n) => write!(f, "^^{n}"),
        }
    }
}

/// A valid UCXL address.
///
/// Held as its canonical text and where each component ends in it: one shared allocation,
/// so a clone is a reference count and a cached record, its envelope and the index keys
/// that name it share one copy. Components can hold none of `:@/`, so the offsets are
/// all it takes to hand them out again.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Address {
    /// `ucxl://agent:role@project:task[/segment...]`, without the temporal segment.
    canonical: Arc<str>,
    /// Byte offsets in `canonical` where the agent, role, project and task end (an address
    /// is at most 1024 bytes).
    ends: [u16; 4],
    temporal: Temporal,
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Address")
            .field("canonical", &&*self.canonical)
            .field("temporal", &self.temporal)
            .finish_non_exhaustive()
    }
}

/// The four named components and the raw path part of an address or pattern, split but
/// not yet validated.
pub(crate) struct RawParts<'a> {
    pub agent: &'a str,
    pub role: &'a str,
    pub project: &'a str,
    pub task: &'a str,
    /// Everything after the authority, without its leading `/` (may be empty).
    pub rest: &'a str,
}

/// Splits `ucxl://AGENT:ROLE@PROJECT:TASK/rest` and checks what is common to addresses and
/// patterns: length, scheme, the characters no part may hold.
pub(crate) fn split(input: &str, whole: Field) -> Result<RawParts<'_>, AddressError> {
    let err = |field, provided: &str, expected, reason: &str| {
        AddressError::new(ErrorKind::Invalid, field, provided, expected, reason)
    };
    if input.len() > MAX_ADDRESS_BYTES {
        return Err(err(whole, input, EXPECT_ADDRESS, "longer than 1024 bytes"));
    }
    let Some((scheme, after)) = input.split_once("://") else {
        return Err(err(Field::Scheme, input, "ucxl://", "missing scheme"));
    };
    if !scheme.eq_ignore_ascii_case("ucxl") {
        return Err(err(Field::Scheme, scheme, "ucxl://", "unknown scheme"));
    }
    let (authority, rest) = after.split_once('/').unwrap_or((after, ""));
    let Some((left, right)) = authority.split_once('@') else {
        return Err(err(
            whole,
            authority,
            "AGENT:ROLE@PROJECT:TASK",
            "missing @ between agent:role and project:task",
        ));
    };
    let Some((agent, role)) = left.split_once(':') else {
        return Err(err(Field::Role, left, "AGENT:ROLE", "missing :ROLE"));
    };
    let Some((project, task)) = right.split_once(':') else {
        return Err(err(Field::Task, right, "PROJECT:TASK", "missing :TASK"));
    };
    Ok(RawParts {
        agent,
        role,
        project,
        task,
        rest,
    })
}

/// Validates an agent, role, project or task. `allow_star` accepts `*` (patterns only).
pub(crate) fn check_component(
    field: Field,
    value: &str,
    allow_star: bool,
) -> Result<(), AddressError> {
    let fail = |reason: &str| {
        AddressError::new(ErrorKind::Invalid, field, value, EXPECT_COMPONENT, reason)
    };
    if value == "*" {
        if allow_star {
            return Ok(());
        }
        return Err(fail(
            "* is a wildcard of search patterns: an address names one record, so search with a pattern",
        ));
    }
    if value.is_empty() {
        return Err(fail("empty"));
    }
    if value.len() > MAX_COMPONENT_CHARS {
        return Err(fail("longer than 64 characters"));
    }
    if let Some(c) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        return Err(fail(&describe(c)));
    }
    Ok(())
}

/// Says why a character is refused, naming the URL feature it would stand for.
pub(crate) fn describe(c: char) -> String {
    match c {
        '?' => "'?' is not allowed (addresses take no query string)".to_owned(),
        '#' => "'#' is not allowed (addresses take no fragment)".to_owned(),
        '%' => "'%' is not allowed (addresses take no percent-escapes)".to_owned(),
        c if c.is_whitespace() => format!("whitespace {c:?} is not allowed"),
        c if c.is_control() => format!("control character U+{:04X} is not allowed", u32::from(c)),
        c if !c.is_ascii() => format!("non-ASCII character {c:?} is not allowed"),
        c => format!("character {c:?} is not allowed"),
    }
}

fn check_segment(segment: &str) -> Result<(), AddressError> {
    let fail = |reason: &str| {
        AddressError::new(
            ErrorKind::Invalid,
            Field::Path,
            segment,
            EXPECT_SEGMENT,
            reason,
        )
    };
    if segment == "." || segment == ".." {
        return Err(fail("relative segments are not allowed"));
    }
    if let Some(c) = segment
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(fail(&describe(c)));
    }
    Ok(())
}

impl Address {
    /// Parses and validates an address.
    ///
    /// # Errors
    /// An [`AddressError`] naming the component that failed, the input and the expected form.
    pub fn parse(input: &str) -> Result<Self, AddressError> {
        let parts = split(input, Field::Address)?;
        check_component(Field::Agent, parts.agent, false)?;
        check_component(Field::Role, parts.role, false)?;
        check_component(Field::Project, parts.project, false)?;
        check_component(Field::Task, parts.task, false)?;
        let mut segments = parts.rest.split('/').filter(|s| !s.is_empty()).peekable();
        let temporal = match segments.peek() {
            Some(first) if Temporal::looks_temporal(first) => {
                let t = Temporal::parse(first)?;
                segments.next();
                t
            }
            _ => Temporal::Latest,
        };
        let components = [parts.agent, parts.role, parts.project, parts.task];
        // `ucxl://` + the components with their three separators + `/segment` each.
        let mut length = SCHEME.len() + components.iter().map(|c| c.len() + 1).sum::<usize>() - 1;
        for segment in segments.clone() {
            check_segment(segment)?;
            length += segment.len() + 1;
        }
        let mut ends = [0u16; 4];
        let mut end = SCHEME.len();
        for (i, component) in components.iter().enumerate() {
            end += usize::from(i > 0) + component.len();
            // `split` refused anything over MAX_ADDRESS_BYTES (1024), so this fits.
            ends[i] = u16::try_from(end).unwrap_or(u16::MAX);
        }
        // Of the same length with a lowercase scheme, the input has no temporal segment,
        // no empty segment and no trailing `/`: it is its canonical text.
        let canonical: Arc<str> = if input.len() == length && input.starts_with(SCHEME) {
            Arc::from(input)
        } else {
            let mut canonical = String::with_capacity(length);
            canonical.push_str(SCHEME);
            for (component, separator) in components.iter().zip(["", ":", "@", ":"]) {
                canonical.push_str(separator);
                canonical.push_str(component);
            }
            for segment in segments {
                canonical.push('/');
                canonical.push_str(segment);
            }
            Arc::from(canonical)
        };
        Ok(Self {
            canonical,
            ends,
            temporal,
        })
    }

    fn component(&self, i: usize) -> &str {
        let start = match i {
            0 => SCHEME.len(),
            _ => usize::from(self.ends[i - 1]) + 1,
        };
        self.canonical
            .get(start..usize::from(self.ends[i]))
            .unwrap_or_default()
    }

    /// The agent component.
    #[must_use]
    pub fn agent(&self) -> &str {
        self.component(0)
    }
    /// The role component.
    #[must_use]
    pub fn role(&self) -> &str {
        self.component(1)
    }
    /// The project component.
    #[must_use]
    pub fn project(&self) -> &str {
        self.component(2)
    }
    /// The task component.
    #[must_use]
    pub fn task(&self) -> &str {
        self.component(3)
    }
    /// The temporal selector (`Latest` when the address had none).
    #[must_use]
    pub fn temporal(&self) -> Temporal {
        self.temporal
    }
    /// The normalised path: its segments joined by `/` (empty when there are none).
    #[must_use]
    pub fn path(&self) -> &str {
        self.canonical
            .get(usize::from(self.ends[3]) + 1..)
            .unwrap_or_default()
    }
    /// The normalised path segments.
    #[must_use]
    pub fn segments(&self) -> impl DoubleEndedIterator<Item = &str> + Clone + '_ {
        self.path().split('/').filter(|s| !s.is_empty())
    }
    /// The storage key: the address without its temporal segment.
    #[must_use]
    pub fn canonical(&self) -> &str {
        &self.canonical
    }
    /// The storage key as a shared string: a copy that costs a reference count.
    #[must_use]
    pub fn canonical_shared(&self) -> Arc<str> {
        Arc::clone(&self.canonical)
    }
    /// The same address without a temporal selector (the canonical address).
    #[must_use]
    pub fn without_temporal(&self) -> Self {
        self.clone().with_temporal(Temporal::Latest)
    }

    /// Refuses a temporal segment that selects a past version: writes and deletes address
    /// the latest version (no segment, or `*^`).
    ///
    /// # Errors
    /// `UCXL-400-TEMPORAL_INVALID` naming the segment.
    pub fn require_latest(&self) -> Result<(), AddressError> {
        if self.temporal == Temporal::Latest {
            return Ok(());
        }
        Err(AddressError::new(
            ErrorKind::TemporalInvalid,
            Field::Temporal,
            &self.temporal.to_string(),
            "no temporal segment (or *^)",
            "writes and deletes address the latest version: drop the temporal segment",
        ))
    }

    /// The same address with another temporal selector.
    #[must_use]
    pub fn with_temporal(mut self, temporal: Temporal) -> Self {
        self.temporal = temporal;
        self
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.temporal == Temporal::Latest {
            return f.write_str(&self.canonical);
        }
        let authority = self
            .canonical
            .get(..usize::from(self.ends[3]))
            .unwrap_or_default();
        write!(f, "{authority}/{}", self.temporal)?;
        let path = self.path();
        if !path.is_empty() {
            write!(f, "/{path}")?;
        }
        Ok(())
    }
}

impl FromStr for Address {
    type Err = AddressError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for Address {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Address {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for Address {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .description(Some(format!("A UCXL address: {EXPECT_ADDRESS}")))
            .max_length(Some(MAX_ADDRESS_BYTES))
            .examples(["ucxl://claude:architect@bzzz:v2-migration/decisions/protocol.json"])
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for Address {}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Address {
        match Address::parse(s) {
            Ok(a) => a,
            Err(e) => panic!("{s} should parse: {e}"),
        }
    }

    fn fails(s: &str) -> AddressError {
        match Address::parse(s) {
            Ok(a) => panic!("{s} should fail, got {a:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn parses_full_address() {
        let a = parse("ucxl://claude:architect@bzzz:v2-migration/*~3/decisions/protocol.json");
        assert_eq!(a.agent(), "claude");
        assert_eq!(a.role(), "architect");
        assert_eq!(a.project(), "bzzz");
        assert_eq!(a.task(), "v2-migration");
        assert_eq!(a.temporal(), Temporal::Version(3));
        assert!(a.segments().eq(["decisions", "protocol.json"]));
        assert_eq!(a.path(), "decisions/protocol.json");
        assert_eq!(
            a.canonical(),
            "ucxl://claude:architect@bzzz:v2-migration/decisions/protocol.json"
        );
        assert_eq!(
            a.to_string(),
            "ucxl://claude:architect@bzzz:v2-migration/*~3/decisions/protocol.json"
        );
    }

    #[test]
    fn absent_temporal_means_latest_and_empty_path_is_allowed() {
        let a = parse("ucxl://a:b@c:d");
        assert_eq!(a.temporal(), Temporal::Latest);
        assert_eq!(a.segments().next(), None);
        assert_eq!(a.path(), "");
        assert_eq!(a.canonical(), "ucxl://a:b@c:d");
        assert_eq!(parse("ucxl://a:b@c:d/*^"), a);
        assert_eq!(parse("ucxl://a:b@c:d/"), a);
    }

    #[test]
    fn components_and_path_come_from_the_one_canonical_text() {
        let a = parse("ucxl://any:r-1@p_2:t/^^4/a//b.c/-d/");
        assert_eq!(
            [a.agent(), a.role(), a.project(), a.task()],
            ["any", "r-1", "p_2", "t"]
        );
        assert_eq!(a.temporal(), Temporal::Forward(4));
        assert_eq!(a.path(), "a/b.c/-d");
        assert!(a.segments().eq(["a", "b.c", "-d"]));
        assert_eq!(a.canonical(), "ucxl://any:r-1@p_2:t/a/b.c/-d");
        assert_eq!(a.to_string(), "ucxl://any:r-1@p_2:t/^^4/a/b.c/-d");
        assert_eq!(parse(&a.to_string()), a);
        // the temporal segment is part of equality, the text is shared by clones
        let latest = a.without_temporal();
        assert_ne!(latest, a);
        assert_eq!(latest, parse("ucxl://any:r-1@p_2:t/a/b.c/-d"));
        assert!(Arc::ptr_eq(
            &latest.canonical_shared(),
            &a.canonical_shared()
        ));
        let hash = |x: &Address| {
            use std::hash::{BuildHasher, RandomState};
            let state = RandomState::new();
            (state.hash_one(x), state.hash_one(x.clone()))
        };
        let (h1, h2) = hash(&latest);
        assert_eq!(h1, h2);
        // the longest components and path still fit the offsets
        let long = "x".repeat(64);
        let mut text = format!("ucxl://{long}:{long}@{long}:{long}");
        while text.len() + 9 <= MAX_ADDRESS_BYTES {
            text.push_str("/segment1");
        }
        let b = parse(&text);
        assert_eq!(b.task(), long);
        assert_eq!(b.canonical(), text);
        assert_eq!(b.path().len(), text.len() - (7 + 4 * 64 + 3) - 1);
    }

    #[test]
    fn scheme_is_case_insensitive_and_printed_lowercase() {
        let a = parse("UCXL://a:b@c:d/x");
        assert_eq!(a.to_string(), "ucxl://a:b@c:d/x");
        assert_eq!(fails("http://a:b@c:d").field, Field::Scheme);
        assert_eq!(fails("a:b@c:d").field, Field::Scheme);
    }

    #[test]
    fn case_of_components_is_preserved_and_significant() {
        let a = parse("ucxl://Claude:Architect@BZZZ:Task_1/Path");
        assert_eq!(a.agent(), "Claude");
        assert_ne!(a, parse("ucxl://claude:Architect@BZZZ:Task_1/Path"));
    }

    #[test]
    fn duplicate_and_trailing_slashes_are_normalised() {
        let a = parse("ucxl://a:b@c:d//x///y/");
        assert_eq!(a.canonical(), "ucxl://a:b@c:d/x/y");
        assert_eq!(parse("ucxl://a:b@c:d//*~//x"), parse("ucxl://a:b@c:d/*~/x"));
    }

    #[test]
    fn any_is_an_ordinary_component_of_an_address() {
        let a = parse("ucxl://any:any@any:any/x");
        assert_eq!(
            [a.agent(), a.role(), a.project(), a.task()],
            [ANY, ANY, ANY, ANY]
        );
        assert_eq!(a.canonical(), "ucxl://any:any@any:any/x");
        assert_eq!(parse(&a.to_string()), a);
        let b = parse("ucxl://claude:any@BZZZ:RUSTLE-testing/*~2/shared/ctx");
        assert_eq!(b.role(), ANY);
        assert_eq!(
            b.canonical(),
            "ucxl://claude:any@BZZZ:RUSTLE-testing/shared/ctx"
        );
        assert_ne!(
            parse("ucxl://ANY:r@p:t/x"),
            parse("ucxl://any:r@p:t/x"),
            "case matters: ANY is another key"
        );
    }

    #[test]
    fn star_is_refused_in_every_component_of_an_address() {
        for (input, field) in [
            ("ucxl://*:r@p:t/x", Field::Agent),
            ("ucxl://a:*@p:t/x", Field::Role),
            ("ucxl://a:r@*:t/x", Field::Project),
            ("ucxl://a:r@p:*/x", Field::Task),
        ] {
            let e = fails(input);
            assert_eq!((e.kind, e.field), (ErrorKind::Invalid, field), "{input}");
            assert!(e.reason.contains("search"), "{}", e.reason);
        }
    }

    #[test]
    fn component_errors_name_the_component() {
        let e = fails("ucxl://claude:arch itect@bzzz:t");
        assert_eq!(e.kind, ErrorKind::Invalid);
        assert_eq!(e.field, Field::Role);
        assert_eq!(e.provided, "arch itect");
        assert!(e.reason.contains("whitespace"), "{}", e.reason);
        let e = fails("ucxl://claude:arch.itect@bzzz:t");
        assert_eq!(e.field, Field::Role);
        assert_eq!(e.provided, "arch.itect");
        assert_eq!(e.expected, EXPECT_COMPONENT);
        assert_eq!(fails("ucxl://:r@p:t").field, Field::Agent);
        assert_eq!(fails("ucxl://a:@p:t").field, Field::Role);
        assert_eq!(fails("ucxl://a:r@:t").field, Field::Project);
        assert_eq!(fails("ucxl://a:r@p:").field, Field::Task);
        assert_eq!(fails("ucxl://a:r@p:t:x").field, Field::Task);
        assert_eq!(fails("ucxl://a:r:x@p:t").field, Field::Role);
        assert_eq!(fails("ucxl://a@p:t").field, Field::Role);
        assert_eq!(fails("ucxl://a:r@p").field, Field::Task);
        assert_eq!(fails("ucxl://a:r").field, Field::Address);
        assert_eq!(fails("ucxl://a:r@p:t@x").field, Field::Task);
        assert_eq!(fails("ucxl://*:r@p:t").field, Field::Agent);
    }

    #[test]
    fn component_length_limit() {
        let ok = "a".repeat(64);
        parse(&format!("ucxl://{ok}:r@p:t"));
        let e = fails(&format!("ucxl://{ok}a:r@p:t"));
        assert_eq!(e.field, Field::Agent);
        assert!(e.reason.contains("64"));
    }

    #[test]
    fn whole_address_length_limit() {
        let prefix = "ucxl://a:b@c:d/";
        let mut s = String::from(prefix);
        while s.len() < MAX_ADDRESS_BYTES {
            let room = MAX_ADDRESS_BYTES - s.len();
            s.push_str(&"x".repeat(room.min(50)));
            if s.len() < MAX_ADDRESS_BYTES - 1 {
                s.push('/');
            }
        }
        assert_eq!(s.len(), MAX_ADDRESS_BYTES);
        parse(&s);
        s.push('z');
        assert_eq!(fails(&s).field, Field::Address);
    }

    #[test]
    fn forbidden_characters_are_reported() {
        for (bad, field, says) in [
            ("ucxl://a:b@c:d/x?q=1", Field::Path, "query"),
            ("ucxl://a:b@c:d?q=1", Field::Task, "query"),
            ("ucxl://a:b@c:d/x#frag", Field::Path, "fragment"),
            ("ucxl://a:b@c:d/x%20y", Field::Path, "percent"),
            ("ucxl://a:b@c:d/x y", Field::Path, "whitespace"),
            ("ucxl://a:b@c:d/\u{e9}", Field::Path, "non-ASCII"),
            ("ucxl://\u{e9}:b@c:d", Field::Agent, "non-ASCII"),
            ("ucxl://a:b@c:d/x\ty", Field::Path, "whitespace"),
            ("ucxl://a:b@c:d/x\u{0}", Field::Path, "control"),
        ] {
            let e = fails(bad);
            assert_eq!(e.field, field, "{bad}");
            assert_eq!(e.kind, ErrorKind::Invalid, "{bad}");
            assert!(e.reason.contains(says), "{bad}: {}", e.reason);
        }
    }

    #[test]
    fn path_segments_are_checked() {
        for bad in [
            "ucxl://a:b@c:d/x/./y",
            "ucxl://a:b@c:d/..",
            "ucxl://a:b@c:d/x/a*b",
            "ucxl://a:b@c:d/x:y",
        ] {
            assert_eq!(fails(bad).field, Field::Path, "{bad}");
        }
        parse("ucxl://a:b@c:d/.hidden/a..b/x-y_z.json");
    }

    #[test]
    fn temporal_forms() {
        let t = |s: &str| parse(&format!("ucxl://a:b@c:d/{s}/p")).temporal();
        assert_eq!(t("*^"), Temporal::Latest);
        assert_eq!(t("*~"), Temporal::First);
        assert_eq!(t("*~0"), Temporal::Version(0));
        assert_eq!(t("*~1"), Temporal::Version(1));
        assert_eq!(t("*~4294967295"), Temporal::Version(u32::MAX));
        assert_eq!(t("~~0"), Temporal::Back(0));
        assert_eq!(t("~~12"), Temporal::Back(12));
        assert_eq!(t("^^0"), Temporal::Forward(0));
        assert_eq!(t("^^7"), Temporal::Forward(7));
    }

    #[test]
    fn temporal_errors() {
        for bad in [
            "*",
            "*~x",
            "*~-1",
            "*~+1",
            "~~",
            "^^",
            "~1",
            "^1",
            "*^1",
            "~~4294967296",
            "^^1.5",
            "**",
            "~",
            "^",
            "*~ 1",
        ] {
            let input = format!("ucxl://a:b@c:d/{bad}/p");
            match Address::parse(&input) {
                Ok(a) => panic!("{bad} should fail, got {a:?}"),
                Err(e) => {
                    assert_eq!(e.kind, ErrorKind::TemporalInvalid, "{bad}");
                    assert_eq!(e.field, Field::Temporal, "{bad}");
                    assert_eq!(e.provided, bad);
                }
            }
        }
        // only the first segment is temporal; later ones are path segments
        assert_eq!(fails("ucxl://a:b@c:d/x/*^").field, Field::Path);
    }

    #[test]
    fn temporal_selection() {
        assert_eq!(Temporal::Latest.select(3), Some(3));
        assert_eq!(Temporal::First.select(3), Some(1));
        assert_eq!(Temporal::Version(2).select(3), Some(2));
        assert_eq!(Temporal::Version(4).select(3), None);
        assert_eq!(Temporal::Version(0).select(3), None);
        assert_eq!(Temporal::Back(0).select(3), Some(3));
        assert_eq!(Temporal::Back(2).select(3), Some(1));
        assert_eq!(Temporal::Back(3).select(3), None);
        assert_eq!(Temporal::Forward(0).select(3), Some(1));
        assert_eq!(Temporal::Forward(2).select(3), Some(3));
        assert_eq!(Temporal::Forward(3).select(3), None);
        assert_eq!(Temporal::Forward(u32::MAX).select(3), None);
        assert_eq!(Temporal::Latest.select(0), None);
    }

    #[test]
    fn serde_uses_the_string_form() {
        let a = parse("ucxl://a:b@c:d/~~1/x");
        let json = serde_json::to_string(&a).expect("serialises");
        assert_eq!(json, "\"ucxl://a:b@c:d/~~1/x\"");
        let back: Address = serde_json::from_str(&json).expect("deserialises");
        assert_eq!(back, a);
        assert!(serde_json::from_str::<Address>("\"nope\"").is_err());
    }

    #[test]
    fn only_the_latest_version_can_be_written() {
        for ok in ["ucxl://a:r@p:t/x", "ucxl://a:r@p:t/*^/x"] {
            assert!(
                Address::parse(ok).expect("valid").require_latest().is_ok(),
                "{ok}"
            );
        }
        for past in [
            "ucxl://a:r@p:t/*~1/x",
            "ucxl://a:r@p:t/~~1/x",
            "ucxl://a:r@p:t/*~/x",
        ] {
            let e = Address::parse(past)
                .expect("valid")
                .require_latest()
                .expect_err("a past version");
            assert_eq!(e.kind, ErrorKind::TemporalInvalid, "{past}");
            assert_eq!(e.field, Field::Temporal);
        }
    }
}
