//! Span fields for JSON logs, written straight into the JSON object the log line carries.
//!
//! `tracing-subscriber`'s JSON layer formats a span's fields when the span is made, with
//! `JsonFields`: a visitor that gathers them into a map of `serde_json` values, then writes
//! the map out. Every request has a span (its request id and trace ids), so that is paid on
//! every request whether or not anything is logged in it: about 6k instructions of a
//! proxied read. [`JsonSpanFields`] writes the same object (`{"name":value,...}`, which the
//! JSON event formatter reads back when a line is logged inside the span) as the fields
//! arrive, with no map and no intermediate strings. Written by hand because the crate
//! offers no cheaper JSON field formatter.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::Writer;

/// Formats span fields as one JSON object (see the module docs).
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonSpanFields;

impl<'writer> FormatFields<'writer> for JsonSpanFields {
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> fmt::Result {
        writer.write_char('{')?;
        let mut visitor = ObjectWriter {
            out: &mut writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result?;
        writer.write_char('}')
    }

    fn add_fields(
        &self,
        current: &mut tracing_subscriber::fmt::FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        // An object written here ends in `}`: reopen it and go on after its last member.
        let first = if current.fields.pop() == Some('}') {
            current.fields.len() <= 1
        } else {
            current.fields.clear();
            current.fields.push('{');
            true
        };
        let mut visitor = ObjectWriter {
            out: &mut current.fields,
            first,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        let result = visitor.result;
        current.fields.push('}');
        result
    }
}

/// Writes `"name":value` members, comma-separated, into `out`.
struct ObjectWriter<'a, W: fmt::Write> {
    out: &'a mut W,
    first: bool,
    result: fmt::Result,
}

impl<W: fmt::Write> ObjectWriter<'_, W> {
    fn member(&mut self, field: &Field, value: impl FnOnce(&mut W) -> fmt::Result) {
        if self.result.is_err() {
            return;
        }
        self.result = (|| {
            if !self.first {
                self.out.write_char(',')?;
            }
            self.first = false;
            write_json_str(self.out, field.name())?;
            self.out.write_char(':')?;
            value(self.out)
        })();
    }
}

impl<W: fmt::Write> Visit for ObjectWriter<'_, W> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.member(field, |out| write_json_str(out, value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.member(field, |out| write!(out, "{value}"));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.member(field, |out| write!(out, "{value}"));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.member(field, |out| write!(out, "{value}"));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        // As a `serde_json` value writes it: a non-finite number has no JSON form.
        self.member(field, |out| match serde_json::Number::from_f64(value) {
            Some(n) => write!(out, "{n}"),
            None => out.write_str("null"),
        });
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.member(field, |out| {
            out.write_char('"')?;
            write!(Escaping(out), "{value:?}")?;
            out.write_char('"')
        });
    }
}

/// `text` as a JSON string.
fn write_json_str<W: fmt::Write>(out: &mut W, text: &str) -> fmt::Result {
    out.write_char('"')?;
    Escaping(out).write_str(text)?;
    out.write_char('"')
}

/// Escapes what it is given as the inside of a JSON string (RFC 8259 §7).
struct Escaping<'a, W: fmt::Write>(&'a mut W);

impl<W: fmt::Write> fmt::Write for Escaping<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut plain = 0;
        for (i, b) in s.bytes().enumerate() {
            let escape = match b {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0x08 => "\\b",
                0x0c => "\\f",
                0..=0x1f => "",
                _ => continue,
            };
            self.0.write_str(&s[plain..i])?;
            if escape.is_empty() {
                write!(self.0, "\\u{b:04x}")?;
            } else {
                self.0.write_str(escape)?;
            }
            plain = i + 1;
        }
        self.0.write_str(&s[plain..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::SubscriberExt;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The lines logged by `body` with the JSON layer and span fields formatted by
    /// `JsonSpanFields` (`ours`) or by the crate's `JsonFields`.
    fn lines(ours: bool, body: impl FnOnce()) -> Vec<serde_json::Value> {
        let captured = Captured::default();
        let writer = captured.clone();
        let layer = tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .without_time()
            .with_writer(move || writer.clone());
        if ours {
            let subscriber = tracing_subscriber::registry().with(layer.fmt_fields(JsonSpanFields));
            tracing::subscriber::with_default(subscriber, body);
        } else {
            let subscriber = tracing_subscriber::registry().with(layer);
            tracing::subscriber::with_default(subscriber, body);
        }
        let text = String::from_utf8(
            captured
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
        )
        .expect("utf-8");
        text.lines()
            .map(|l| serde_json::from_str(l).expect("each line is JSON"))
            .collect()
    }

    #[test]
    fn span_fields_read_back_as_the_crates_json_fields_write_them() {
        let logged = |ours| {
            lines(ours, || {
                let id = "r\"q\\1\n\u{1}é";
                let span = tracing::info_span!(
                    "request",
                    request_id = %id,
                    n = 7_u64,
                    neg = -3_i64,
                    ok = true,
                    ratio = 0.5_f64,
                    nan = f64::NAN,
                    text = "plain",
                    debug = ?vec!["a"],
                    later = tracing::field::Empty,
                );
                span.in_scope(|| tracing::info!(status = 200, "answered"));
                span.record("later", "set after");
                span.record("n", 8_u64);
                span.in_scope(|| tracing::warn!("again"));
                let empty = tracing::info_span!("empty", late = tracing::field::Empty);
                empty.in_scope(|| tracing::info!("inside an empty span"));
                empty.record("late", 1_u64);
                empty.in_scope(|| tracing::info!("inside it again"));
            })
        };
        let ours = logged(true);
        let theirs = logged(false);
        assert_eq!(ours.len(), 4);
        assert_eq!(ours, theirs);
        assert_eq!(ours[0]["span"]["request_id"], "r\"q\\1\n\u{1}é");
        assert_eq!(ours[1]["span"]["later"], "set after");
        assert_eq!(ours[3]["span"]["late"], 1);
    }
}
