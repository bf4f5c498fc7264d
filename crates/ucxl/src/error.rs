//! Validation errors of addresses, patterns, ids and payloads: what failed, the input, the
//! expected form.

use std::fmt;

use serde::Serialize;

use crate::response::Code;

/// Longest excerpt of offending input echoed back in an error.
const MAX_ECHO: usize = 160;

/// The part of an address or pattern that failed validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Field {
    /// The whole address (length, overall shape).
    Address,
    /// The whole search pattern (length, overall shape).
    Pattern,
    /// `ucxl://`.
    Scheme,
    /// `AGENT`.
    Agent,
    /// `ROLE`.
    Role,
    /// `PROJECT`.
    Project,
    /// `TASK`.
    Task,
    /// The temporal segment.
    Temporal,
    /// A path segment.
    Path,
}

impl Field {
    /// The field's name as used in error details.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Address => "address",
            Self::Pattern => "pattern",
            Self::Scheme => "scheme",
            Self::Agent => "agent",
            Self::Role => "role",
            Self::Project => "project",
            Self::Task => "task",
            Self::Temporal => "temporal",
            Self::Path => "path",
        }
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether an address error is about its shape or its temporal segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// `UCXL-400-INVALID_ADDRESS`.
    Invalid,
    /// `UCXL-400-TEMPORAL_INVALID`.
    TemporalInvalid,
}

/// An address or pattern that failed validation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {reason} (provided {provided:?}, expected {expected})")]
pub struct AddressError {
    /// Shape or temporal problem.
    pub kind: ErrorKind,
    /// The component that failed.
    pub field: Field,
    /// The offending input (shortened when very long).
    pub provided: String,
    /// The expected form.
    pub expected: &'static str,
    /// Why it was refused.
    pub reason: String,
}

impl AddressError {
    pub(crate) fn new(
        kind: ErrorKind,
        field: Field,
        provided: &str,
        expected: &'static str,
        reason: &str,
    ) -> Self {
        Self {
            kind,
            field,
            provided: excerpt(provided),
            expected,
            reason: reason.to_owned(),
        }
    }

    /// The response code this error maps to.
    #[must_use]
    pub fn code(&self) -> Code {
        match self.kind {
            ErrorKind::Invalid => Code::InvalidAddress,
            ErrorKind::TemporalInvalid => Code::TemporalInvalid,
        }
    }

    /// The error details object: `{field, provided, expected, reason}`.
    #[must_use]
    pub fn details(&self) -> serde_json::Value {
        serde_json::json!({
            "field": self.field,
            "provided": self.provided,
            "expected": self.expected,
            "reason": self.reason,
        })
    }
}

/// An error and its causes on one line (`a: b: c`), for logs and operators' messages
/// (never for clients: causes carry dependencies' text).
#[derive(Debug, Clone, Copy)]
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

/// Shortens `input` to at most [`MAX_ECHO`] bytes on a character boundary.
#[must_use]
pub fn excerpt(input: &str) -> String {
    if input.len() <= MAX_ECHO {
        return input.to_owned();
    }
    let mut end = MAX_ECHO;
    while !input.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &input[..end], input.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_shows_every_cause() {
        #[derive(Debug, thiserror::Error)]
        #[error("cannot open the journal")]
        struct Open(#[source] std::io::Error);
        let e = Open(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "permission denied",
        ));
        assert_eq!(
            Chain(&e).to_string(),
            "cannot open the journal: permission denied"
        );
    }

    #[test]
    fn excerpt_keeps_short_input_and_cuts_long_input_on_a_char_boundary() {
        assert_eq!(excerpt("abc"), "abc");
        let long = "é".repeat(200);
        let cut = excerpt(&long);
        assert!(cut.len() < 200);
        assert!(cut.ends_with("(400 bytes)"));
    }

    #[test]
    fn details_name_field_input_and_expected_form() {
        let e = AddressError::new(
            ErrorKind::Invalid,
            Field::Role,
            "arch itect",
            "[A-Za-z0-9_-]{1,64} or any",
            "whitespace ' ' is not allowed",
        );
        assert_eq!(e.code(), Code::InvalidAddress);
        assert_eq!(
            e.details(),
            serde_json::json!({
                "field": "role",
                "provided": "arch itect",
                "expected": "[A-Za-z0-9_-]{1,64} or any",
                "reason": "whitespace ' ' is not allowed",
            })
        );
    }
}
