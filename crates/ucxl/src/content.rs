//! The content of a version: any JSON value, kept as the JSON text it arrived in when it
//! arrived as text.
//!
//! A version read from JSON (a node's answer, a stored record, a peer's push) keeps its
//! content as the text it was read from: checked to be JSON, not built into a tree. Written
//! back to JSON, that text is copied out unchanged. A read the gateway passes through, or a
//! stored version a node serves, then costs a scan and a copy instead of a decode into a
//! `Value` tree and an encode back out. Content made from a `Value` (a client's body) holds
//! the value. Either way it is shared, so clones are cheap.
//!
//! Where a tree is needed (the JCS hash that checks a pushed record, an MCP tool's text),
//! [`Content::value`] parses the text on demand.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::envelope::{ContentHash, DigestError, content_digest};

/// Any JSON value, as a tree or as the JSON text it was read from (see the module docs).
#[derive(Clone)]
pub struct Content(Repr);

#[derive(Clone)]
enum Repr {
    Value(Arc<Value>),
    Text(Arc<RawValue>),
}

/// JSON text that has no `Value` form: a number beyond the range of `f64` (valid JSON,
/// which a `Value` cannot hold).
#[derive(Debug, thiserror::Error)]
#[error("the content has no JSON value form: {0}")]
pub struct ContentError(#[from] serde_json::Error);

impl Content {
    /// The content as a tree: borrowed when it is one, parsed from its text otherwise.
    ///
    /// # Errors
    /// [`ContentError`] for text that no `Value` can hold (a number out of range).
    pub fn value(&self) -> Result<Cow<'_, Value>, ContentError> {
        match &self.0 {
            Repr::Value(v) => Ok(Cow::Borrowed(v)),
            Repr::Text(t) => Ok(Cow::Owned(serde_json::from_str(t.get())?)),
        }
    }

    /// The content as an owned tree.
    ///
    /// # Errors
    /// As [`Content::value`].
    pub fn to_value(&self) -> Result<Value, ContentError> {
        self.value().map(Cow::into_owned)
    }

    /// The JSON text the content was read from, when it was read from text.
    #[must_use]
    pub fn json_text(&self) -> Option<&str> {
        match &self.0 {
            Repr::Value(_) => None,
            Repr::Text(t) => Some(t.get()),
        }
    }

    /// The JCS (RFC 8785) hash and byte length of the content.
    ///
    /// # Errors
    /// [`DigestError`] when the content has no value form or no canonical form.
    pub fn digest(&self) -> Result<(ContentHash, u64), DigestError> {
        let value = self.value().map_err(|e| DigestError::new(e.to_string()))?;
        content_digest(&value)
    }
}

impl From<Value> for Content {
    fn from(value: Value) -> Self {
        Self(Repr::Value(Arc::new(value)))
    }
}

impl From<Arc<Value>> for Content {
    fn from(value: Arc<Value>) -> Self {
        Self(Repr::Value(value))
    }
}

impl From<Box<RawValue>> for Content {
    fn from(text: Box<RawValue>) -> Self {
        Self(Repr::Text(Arc::from(text)))
    }
}

impl PartialEq for Content {
    /// The same JSON value (object members in any order, as `Value` compares them).
    fn eq(&self, other: &Self) -> bool {
        if let (Repr::Text(a), Repr::Text(b)) = (&self.0, &other.0)
            && a.get() == b.get()
        {
            return true;
        }
        match (self.value(), other.value()) {
            (Ok(a), Ok(b)) => a == b,
            // Text without a value form equals only the same text (compared above).
            _ => false,
        }
    }
}

impl PartialEq<Value> for Content {
    fn eq(&self, other: &Value) -> bool {
        self.value().is_ok_and(|v| *v == *other)
    }
}

impl fmt::Debug for Content {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Repr::Value(v) => fmt::Debug::fmt(v, f),
            Repr::Text(t) => f.write_str(t.get()),
        }
    }
}

impl fmt::Display for Content {
    /// Compact JSON.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Repr::Value(v) => fmt::Display::fmt(v, f),
            Repr::Text(t) => f.write_str(t.get()),
        }
    }
}

impl Serialize for Content {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match &self.0 {
            Repr::Value(v) => v.serialize(serializer),
            // serde_json writes the text as it is; its `Value` serializer parses it.
            Repr::Text(t) => t.serialize(serializer),
        }
    }
}

/// The name under which `serde_json` hands a value's JSON text to a deserializer that asks
/// for it (what `RawValue` asks with). Any other deserializer (one that buffered the value,
/// as internally tagged enums do, or another format) sees an ordinary newtype struct and
/// gets the value parsed, so content is read right either way; a test checks that
/// `serde_json` still hands out the text.
const JSON_TEXT: &str = "$serde_json::private::RawValue";

impl<'de> Deserialize<'de> for Content {
    /// Keeps the JSON text when the deserializer has it (`serde_json` reading text or a
    /// `Value`): checked to be JSON, not parsed into a tree.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_newtype_struct(JSON_TEXT, ContentVisitor)
    }
}

struct ContentVisitor;

impl<'de> Visitor<'de> for ContentVisitor {
    type Value = Content;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    /// `serde_json`'s answer to [`JSON_TEXT`]: one entry whose value is the text.
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Content, A::Error> {
        if map.next_key::<IgnoredAny>()?.is_none() {
            return Err(de::Error::invalid_length(0, &self));
        }
        let text = map.next_value_seed(JsonText)?;
        Ok(Content::from(text))
    }

    /// Any other deserializer: the value, parsed.
    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Content, D::Error> {
        Value::deserialize(d).map(Content::from)
    }
}

/// The JSON text `serde_json` hands out, as a `RawValue` (checked again: `RawValue` has no
/// unchecked constructor; a scan is cheap next to building a tree).
struct JsonText;

impl<'de> DeserializeSeed<'de> for JsonText {
    type Value = Box<RawValue>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Box<RawValue>, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for JsonText {
    type Value = Box<RawValue>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JSON text")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Box<RawValue>, E> {
        RawValue::from_string(text.to_owned()).map_err(E::custom)
    }

    fn visit_string<E: de::Error>(self, text: String) -> Result<Box<RawValue>, E> {
        RawValue::from_string(text).map_err(E::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct Holder {
        content: Content,
    }

    #[test]
    fn text_read_is_written_back_unchanged() {
        // Member order, number spelling and escapes survive: the text is copied, not
        // re-encoded.
        let text = r#"{"content":{"z":1,"a":[1.50,"\u00e9"],"big":1e400}}"#;
        let held: Holder = serde_json::from_str(text).expect("JSON");
        assert_eq!(
            held.content.json_text(),
            Some(r#"{"z":1,"a":[1.50,"\u00e9"],"big":1e400}"#)
        );
        assert_eq!(serde_json::to_string(&held).expect("written"), text);
    }

    #[test]
    fn values_are_written_as_json() {
        let held = Holder {
            content: json!({"a": [1, null]}).into(),
        };
        assert_eq!(
            serde_json::to_string(&held).expect("written"),
            r#"{"content":{"a":[1,null]}}"#
        );
        assert_eq!(held.content.json_text(), None);
    }

    #[test]
    fn text_and_value_of_the_same_json_are_equal_and_hash_alike() {
        let from_text: Holder =
            serde_json::from_str(r#"{"content": {"b": 2, "a": 1}}"#).expect("JSON");
        let from_value = Content::from(json!({"a": 1, "b": 2}));
        assert_eq!(from_text.content, from_value);
        assert_eq!(from_text.content, json!({"a": 1, "b": 2}));
        assert_ne!(from_text.content, Content::from(json!({"a": 1})));
        assert_eq!(
            from_text.content.digest().expect("digest"),
            from_value.digest().expect("digest")
        );
    }

    #[test]
    fn text_without_a_value_form_is_an_error_not_a_guess() {
        let held: Holder = serde_json::from_str(r#"{"content": 1e400}"#).expect("JSON");
        assert!(held.content.value().is_err());
        assert!(held.content.digest().is_err());
        assert_ne!(held.content, Content::from(json!(null)));
        // the same text is still the same content
        let again: Holder = serde_json::from_str(r#"{"content":1e400}"#).expect("JSON");
        assert_eq!(held.content, again.content);
    }

    #[test]
    fn invalid_json_is_refused() {
        assert!(serde_json::from_str::<Holder>(r#"{"content": {"a": }}"#).is_err());
        assert!(serde_json::from_str::<Holder>(r#"{"content": tru}"#).is_err());
    }

    #[test]
    fn read_inside_an_internally_tagged_enum() {
        // serde buffers such an enum's fields: the content arrives parsed, still right.
        #[derive(Debug, Deserialize)]
        #[serde(tag = "kind")]
        enum Tagged {
            Held(Holder),
        }
        let Tagged::Held(held) =
            serde_json::from_str(r#"{"kind": "Held", "content": {"a": [1, "x"]}}"#).expect("JSON");
        assert_eq!(held.content, json!({"a": [1, "x"]}));
    }

    #[test]
    fn read_from_a_value_tree_too() {
        let held: Holder =
            serde_json::from_value(json!({"content": {"k": [true]}})).expect("from a tree");
        assert_eq!(held.content, json!({"k": [true]}));
        let tree = serde_json::to_value(&held).expect("to a tree");
        assert_eq!(tree, json!({"content": {"k": [true]}}));
    }
}
