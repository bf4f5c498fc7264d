//! W3C Trace Context (<https://www.w3.org/TR/trace-context/>): the `traceparent` and
//! `tracestate` request headers, read strictly, and the trace and span ids of each request.
//!
//! A request with a valid `traceparent` joins the caller's trace: its span gets a new id
//! and the caller's span as its parent. A missing or invalid `traceparent` (wrong length,
//! upper-case or non-hex digits, an all-zero id, version `ff`, a repeated header) starts a
//! new trace: never an error answer, as the specification asks. A valid `tracestate` is
//! passed on unchanged (bounded: at most 32 members and 512 characters); an invalid one is
//! dropped, and so is any `tracestate` without a valid `traceparent`.
//!
//! Hand-written rather than taken from `opentelemetry`'s propagator: the ids are plain
//! integers made from a thread-local generator, so a request that is not exported costs no
//! allocation and no `Context`, and ids are the same whether export is on or off.

use std::fmt;
use std::num::{NonZeroU64, NonZeroU128};

use axum::http::{HeaderMap, HeaderName, HeaderValue};

/// `traceparent`.
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// `tracestate`.
pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// Most `tracestate` members passed on; a longer list is dropped whole (W3C §3.3.1.1).
pub const MAX_TRACESTATE_MEMBERS: usize = 32;
/// Longest `tracestate` passed on (what W3C asks every vendor to propagate at least);
/// a longer one is cut as §3.3.1.5 says.
pub const MAX_TRACESTATE_LEN: usize = 512;
/// When `tracestate` is too long, members longer than this go first.
const LONG_MEMBER: usize = 128;
/// The length of a version-00 `traceparent`.
const TRACEPARENT_LEN: usize = 55;

/// A trace id: 16 bytes, never all zero.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId(NonZeroU128);

/// A span id: 8 bytes, never all zero.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpanId(NonZeroU64);

impl TraceId {
    /// A random trace id.
    #[must_use]
    pub fn random() -> Self {
        loop {
            if let Some(id) = NonZeroU128::new(fastrand::u128(..)) {
                return Self(id);
            }
        }
    }

    /// The id of 32 lower-case hex digits, when they are that and not all zero.
    #[must_use]
    pub fn from_hex(hex: &[u8]) -> Option<Self> {
        if hex.len() != 32 {
            return None;
        }
        let mut n = 0u128;
        for &b in hex {
            n = (n << 4) | u128::from(hex_digit(b)?);
        }
        NonZeroU128::new(n).map(Self)
    }

    /// The id's 16 bytes, most significant first (as OTLP carries it).
    #[must_use]
    pub fn to_bytes(self) -> [u8; 16] {
        self.0.get().to_be_bytes()
    }
}

impl SpanId {
    /// A random span id.
    #[must_use]
    pub fn random() -> Self {
        loop {
            if let Some(id) = NonZeroU64::new(fastrand::u64(..)) {
                return Self(id);
            }
        }
    }

    /// The id of 16 lower-case hex digits, when they are that and not all zero.
    #[must_use]
    pub fn from_hex(hex: &[u8]) -> Option<Self> {
        if hex.len() != 16 {
            return None;
        }
        let mut n = 0u64;
        for &b in hex {
            n = (n << 4) | u64::from(hex_digit(b)?);
        }
        NonZeroU64::new(n).map(Self)
    }

    /// The id's 8 bytes, most significant first.
    #[must_use]
    pub fn to_bytes(self) -> [u8; 8] {
        self.0.get().to_be_bytes()
    }
}

/// A lower-case hex digit's value (W3C allows no upper case).
fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Writes `bytes` as lower-case hex into `out` (twice as long).
fn encode(bytes: &[u8], out: &mut [u8]) {
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX[usize::from(b >> 4)];
        pair[1] = HEX[usize::from(b & 0xf)];
    }
}

/// Formats `bytes` as hex without allocating.
fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    let mut buf = [0u8; 32];
    let out = &mut buf[..bytes.len() * 2];
    encode(bytes, out);
    f.write_str(std::str::from_utf8(out).map_err(|_| fmt::Error)?)
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.to_bytes())
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.to_bytes())
    }
}

impl fmt::Debug for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// What a valid `traceparent` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Traceparent {
    /// The trace.
    pub trace_id: TraceId,
    /// The caller's span.
    pub parent_id: SpanId,
    /// The caller's `sampled` flag.
    pub sampled: bool,
}

impl Traceparent {
    /// Parses one `traceparent` value (W3C §3.2): `00-<32 hex>-<16 hex>-<2 hex>`, lower
    /// case, ids not all zero. A later version (`01`..`fe`) is read as version 00 when its
    /// first 55 characters are one and what follows starts with `-`; version `ff` is
    /// invalid.
    #[must_use]
    pub fn parse(value: &[u8]) -> Option<Self> {
        if value.len() < TRACEPARENT_LEN {
            return None;
        }
        let version = hex_byte(&value[0..2])?;
        if version == 0xff
            || (version == 0 && value.len() != TRACEPARENT_LEN)
            || (value.len() > TRACEPARENT_LEN && value[TRACEPARENT_LEN] != b'-')
        {
            return None;
        }
        if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
            return None;
        }
        let trace_id = TraceId::from_hex(&value[3..35])?;
        let parent_id = SpanId::from_hex(&value[36..52])?;
        let flags = hex_byte(&value[53..55])?;
        Some(Self {
            trace_id,
            parent_id,
            sampled: flags & 1 == 1,
        })
    }

    /// The request's `traceparent`: `None` when absent, invalid or repeated.
    #[must_use]
    pub fn of(headers: &HeaderMap) -> Option<Self> {
        let mut values = headers.get_all(&TRACEPARENT).iter();
        let value = values.next()?;
        if values.next().is_some() {
            return None;
        }
        Self::parse(value.as_bytes())
    }
}

fn hex_byte(two: &[u8]) -> Option<u8> {
    match two {
        [hi, lo] => Some((hex_digit(*hi)? << 4) | hex_digit(*lo)?),
        _ => None,
    }
}

/// The trace context of one unit of work (a request, or an attempt it makes): which trace,
/// which span, whose child, whether sampled, and the vendors' `tracestate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// The trace.
    pub trace_id: TraceId,
    /// This span.
    pub span_id: SpanId,
    /// The parent span: the caller's (remote) for a request that came with a
    /// `traceparent`, the request's for an attempt; `None` for a new trace.
    pub parent_id: Option<SpanId>,
    /// Whether the trace is recorded (the caller's flag, or ours for a new trace).
    pub sampled: bool,
    /// The `tracestate` to pass on, validated and bounded.
    pub tracestate: Option<HeaderValue>,
}

impl TraceContext {
    /// The context of a request with `headers`: in the caller's trace when it sent a valid
    /// `traceparent`, else a new trace.
    #[must_use]
    pub fn from_headers(headers: &HeaderMap) -> Self {
        match Traceparent::of(headers) {
            Some(parent) => Self {
                trace_id: parent.trace_id,
                span_id: SpanId::random(),
                parent_id: Some(parent.parent_id),
                sampled: parent.sampled,
                tracestate: tracestate(headers),
            },
            None => Self::root(),
        }
    }

    /// A new trace of a request that came without one: sampled when spans are exported
    /// (the service records it).
    #[must_use]
    pub fn root() -> Self {
        Self {
            sampled: crate::otlp::enabled(),
            ..Self::unsampled()
        }
    }

    /// A new trace that is not recorded: the service's own routine work (health checks,
    /// change feeds, journal replays). Its ids still reach the callee's log lines; its
    /// spans, and the callee's, are not exported.
    #[must_use]
    pub fn unsampled() -> Self {
        Self {
            trace_id: TraceId::random(),
            span_id: SpanId::random(),
            parent_id: None,
            sampled: false,
            tracestate: None,
        }
    }

    /// A child span of this one: same trace, flags and `tracestate`, a new span id.
    #[must_use]
    pub fn child(&self) -> Self {
        Self {
            trace_id: self.trace_id,
            span_id: SpanId::random(),
            parent_id: Some(self.span_id),
            sampled: self.sampled,
            tracestate: self.tracestate.clone(),
        }
    }

    /// The `traceparent` that makes this span the parent of the callee's:
    /// `00-<trace id>-<span id>-<flags>`.
    #[must_use]
    pub fn traceparent(&self) -> HeaderValue {
        let mut buf = *b"00-00000000000000000000000000000000-0000000000000000-00";
        encode(&self.trace_id.to_bytes(), &mut buf[3..35]);
        encode(&self.span_id.to_bytes(), &mut buf[36..52]);
        buf[54] = if self.sampled { b'1' } else { b'0' };
        // Hex digits and dashes: always a valid header value.
        HeaderValue::from_bytes(&buf).unwrap_or_else(|_| HeaderValue::from_static(""))
    }
}

/// The request's `tracestate` as it is to be passed on: the header as sent when it is one
/// valid line within the bounds, else its members joined and cut to the bounds; `None`
/// when absent or invalid (a member that breaks the grammar, more than 32 members, a key
/// given twice).
#[must_use]
pub fn tracestate(headers: &HeaderMap) -> Option<HeaderValue> {
    let mut values = headers.get_all(&TRACESTATE).iter();
    let first = values.next()?;
    let second = values.next();
    // On the stack: a valid list has at most 32 members, and most requests pass it on as
    // it came.
    let mut keys = [""; MAX_TRACESTATE_MEMBERS];
    let mut found = [""; MAX_TRACESTATE_MEMBERS];
    let mut n = 0;
    for value in std::iter::once(first).chain(second).chain(values) {
        for member in value.to_str().ok()?.split(',') {
            let member = member.trim_matches([' ', '\t']);
            if member.is_empty() {
                continue;
            }
            let (key, _) = valid_member(member)?;
            if n == MAX_TRACESTATE_MEMBERS || keys[..n].contains(&key) {
                return None;
            }
            keys[n] = key;
            found[n] = member;
            n += 1;
        }
    }
    if n == 0 {
        return None;
    }
    if second.is_none() && first.len() <= MAX_TRACESTATE_LEN {
        return Some(first.clone());
    }
    let mut members = found[..n].to_vec();
    let joined_len = |ms: &[&str]| ms.iter().map(|m| m.len()).sum::<usize>() + ms.len() - 1;
    if joined_len(&members) > MAX_TRACESTATE_LEN {
        members.retain(|m| m.len() <= LONG_MEMBER);
        while !members.is_empty() && joined_len(&members) > MAX_TRACESTATE_LEN {
            members.pop();
        }
    }
    if members.is_empty() {
        return None;
    }
    HeaderValue::from_str(&members.join(",")).ok()
}

/// `key=value` of a `tracestate` list member (W3C §3.3.1.3), split, when valid.
fn valid_member(member: &str) -> Option<(&str, &str)> {
    let (key, value) = member.split_once('=')?;
    let rest_of_key = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-*/".contains(&b);
    let key_ok = match key.split_once('@') {
        None => {
            key.len() <= 256
                && key.as_bytes().first().is_some_and(u8::is_ascii_lowercase)
                && key.bytes().all(rest_of_key)
        }
        Some((tenant, system)) => {
            (1..=241).contains(&tenant.len())
                && tenant
                    .as_bytes()
                    .first()
                    .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                && tenant.bytes().all(rest_of_key)
                && (1..=14).contains(&system.len())
                && system
                    .as_bytes()
                    .first()
                    .is_some_and(u8::is_ascii_lowercase)
                && system.bytes().all(rest_of_key)
        }
    };
    let nblk = |b: u8| (0x21..=0x7e).contains(&b) && b != b',' && b != b'=';
    let value_ok = (1..=256).contains(&value.len())
        && value.bytes().all(|b| b == b' ' || nblk(b))
        && value.as_bytes().last().is_some_and(|b| nblk(*b));
    (key_ok && value_ok).then_some((key, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(*name, HeaderValue::from_str(value).expect("value"));
        }
        h
    }

    #[test]
    fn a_valid_traceparent_is_read() {
        let p = Traceparent::parse(VALID.as_bytes()).expect("valid");
        assert_eq!(p.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(p.parent_id.to_string(), "00f067aa0ba902b7");
        assert!(p.sampled);
        let unsampled = VALID.replace("-01", "-00");
        assert!(
            !Traceparent::parse(unsampled.as_bytes())
                .expect("valid")
                .sampled
        );
        // Flags other than `sampled` are allowed; only bit 0 counts.
        let other = VALID.replace("-01", "-02");
        assert!(!Traceparent::parse(other.as_bytes()).expect("valid").sampled);
    }

    #[test]
    fn invalid_traceparents_are_refused() {
        for bad in [
            "",
            "00",
            // upper case
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0A",
            // all-zero ids
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            // version ff, and version 00 with anything after it
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            // wrong separators, lengths, digits
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            " 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(Traceparent::parse(bad.as_bytes()), None, "{bad:?}");
        }
    }

    #[test]
    fn later_versions_are_read_as_version_00() {
        let v1 = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert!(Traceparent::parse(v1.as_bytes()).is_some());
        let longer = format!("{v1}-what-comes-later");
        assert!(Traceparent::parse(longer.as_bytes()).is_some());
        let glued = format!("{v1}what");
        assert_eq!(Traceparent::parse(glued.as_bytes()), None);
    }

    #[test]
    fn a_repeated_traceparent_starts_a_new_trace() {
        let h = headers(&[("traceparent", VALID), ("traceparent", VALID)]);
        assert_eq!(Traceparent::of(&h), None);
        let context = TraceContext::from_headers(&h);
        assert_ne!(context.trace_id.to_string(), &VALID[3..35]);
        assert_eq!(context.parent_id, None);
    }

    #[test]
    fn a_request_joins_the_callers_trace_and_its_children_follow() {
        let h = headers(&[("traceparent", VALID), ("tracestate", "congo=t61rcWkgMzE")]);
        let request = TraceContext::from_headers(&h);
        assert_eq!(request.trace_id.to_string(), &VALID[3..35]);
        assert_eq!(
            request.parent_id.map(|p| p.to_string()).as_deref(),
            Some(&VALID[36..52])
        );
        assert!(request.sampled);
        let attempt = request.child();
        assert_eq!(attempt.trace_id, request.trace_id);
        assert_eq!(attempt.parent_id, Some(request.span_id));
        assert_ne!(attempt.span_id, request.span_id);
        assert_eq!(attempt.tracestate, request.tracestate);
        let sent = attempt.traceparent();
        let sent = sent.to_str().expect("ascii");
        assert_eq!(
            sent,
            format!("00-{}-{}-01", request.trace_id, attempt.span_id),
            "the attempt's span is the callee's parent"
        );
        assert_eq!(
            Traceparent::parse(sent.as_bytes()).map(|p| p.parent_id),
            Some(attempt.span_id)
        );
    }

    #[test]
    fn ids_are_random_and_never_zero() {
        let a = TraceContext::root();
        let b = TraceContext::root();
        assert_ne!(a.trace_id, b.trace_id);
        assert_ne!(a.span_id, b.span_id);
        assert_eq!(a.trace_id.to_string().len(), 32);
        assert_eq!(a.span_id.to_string().len(), 16);
    }

    #[test]
    fn tracestate_passes_through_when_valid() {
        let with = |values: &[&str]| {
            let mut pairs = vec![("traceparent", VALID)];
            pairs.extend(values.iter().map(|v| ("tracestate", *v)));
            tracestate(&headers(&pairs))
        };
        let one = "rojo=00f067aa0ba902b7, congo=t61rcWkgMzE";
        assert_eq!(
            with(&[one]).as_ref().map(|v| v.to_str().expect("ascii")),
            Some(one),
            "unchanged"
        );
        assert_eq!(
            with(&["rojo=00f067aa0ba902b7", "congo=t61rcWkgMzE"])
                .as_ref()
                .map(|v| v.to_str().expect("ascii")),
            Some("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"),
            "several headers are one list"
        );
        assert!(with(&["tenant@vendor=x y,a_b-c*d/e=1"]).is_some());
        for bad in [
            "Upper=1",
            "1abc=1",
            "a=",
            "=c",
            "a=b=c",
            "noequals",
            "a=1,a=2",
            "a@=1",
            "a@12345678901234x=1",
        ] {
            assert_eq!(with(&[bad]), None, "{bad:?}");
        }
        let thirty_three = (0..33)
            .map(|i| format!("k{i}=v"))
            .collect::<Vec<_>>()
            .join(",");
        assert_eq!(with(&[&thirty_three]), None, "more than 32 members");
        let thirty_two = (0..32)
            .map(|i| format!("k{i}=v"))
            .collect::<Vec<_>>()
            .join(",");
        assert!(with(&[&thirty_two]).is_some());
    }

    #[test]
    fn a_long_tracestate_is_cut_long_members_first() {
        let long = format!("big={}", "x".repeat(200));
        let small: Vec<String> = (10..35)
            .map(|i| format!("k{i}={}", "y".repeat(20)))
            .collect();
        let value = format!("{},{long},{}", small[..5].join(","), small[5..].join(","));
        let h = headers(&[("traceparent", VALID), ("tracestate", &value)]);
        let cut = tracestate(&h).expect("kept in part");
        let cut = cut.to_str().expect("ascii");
        assert!(cut.len() <= MAX_TRACESTATE_LEN, "{}", cut.len());
        assert!(!cut.contains("big="), "the long member goes first");
        assert!(cut.starts_with("k10="), "{cut}");
        assert!(
            !cut.contains("k34="),
            "members are dropped from the end: {cut}"
        );
        assert!(cut.contains("k29="), "as few as needed: {cut}");
    }
}
