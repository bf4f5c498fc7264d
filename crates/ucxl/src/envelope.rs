//! Envelopes (SPEC §3): ids, content hashes, timestamps, one stored version and the views
//! of it that clients see (envelope, history entry, search item).

use std::fmt;
use std::io;

use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::address::Address;
use crate::content::Content;

/// Longest accepted envelope id, in bytes.
pub const MAX_ID_BYTES: usize = 128;
/// The content type of an envelope that names none.
pub const DEFAULT_CONTENT_TYPE: &str = "application/json";

/// An envelope id: a client's `Idempotency-Key` (1..=128 printable ASCII, no leading or
/// trailing space) or a `UUIDv7`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EnvelopeId(String);

/// An id that is not 1..=128 printable ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "an envelope id must be 1 to 128 printable ASCII characters without leading or trailing spaces"
)]
pub struct IdError;

impl EnvelopeId {
    /// Validates a client-chosen id.
    ///
    /// # Errors
    /// [`IdError`] when the id is empty, too long or not printable ASCII.
    pub fn parse(id: &str) -> Result<Self, IdError> {
        let printable = id.bytes().all(|b| (0x20..=0x7e).contains(&b));
        if id.is_empty() || id.len() > MAX_ID_BYTES || !printable || id.trim() != id {
            return Err(IdError);
        }
        Ok(Self(id.to_owned()))
    }

    /// A fresh `UUIDv7` (time-ordered) id.
    #[must_use]
    pub fn generate() -> Self {
        Self(uuid::Uuid::now_v7().to_string())
    }

    /// The id text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EnvelopeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for EnvelopeId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for EnvelopeId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Longest principal name, in bytes.
pub const MAX_PRINCIPAL_BYTES: usize = 128;

/// Who wrote a version (`written_by`): the name of the principal the gateway
/// authenticated, set by the gateway and never by the client. 1..=128 printable ASCII
/// characters without leading or trailing spaces.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PrincipalName(String);

/// A principal name that is not 1..=128 printable ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "a principal name must be 1 to 128 printable ASCII characters without leading or trailing spaces"
)]
pub struct PrincipalNameError;

impl PrincipalName {
    /// Validates a principal name.
    ///
    /// # Errors
    /// [`PrincipalNameError`] when the name is empty, too long or not printable ASCII.
    pub fn parse(name: &str) -> Result<Self, PrincipalNameError> {
        let printable = name.bytes().all(|b| (0x20..=0x7e).contains(&b));
        if name.is_empty() || name.len() > MAX_PRINCIPAL_BYTES || !printable || name.trim() != name
        {
            return Err(PrincipalNameError);
        }
        Ok(Self(name.to_owned()))
    }

    /// The name.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PrincipalName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for PrincipalName {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for PrincipalName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// `sha256:<64 lowercase hex>` of a content's JCS (RFC 8785) serialisation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ContentHash(String);

/// A hash that is not `sha256:` followed by 64 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a content hash must be sha256: followed by 64 lowercase hex digits")]
pub struct HashFormatError;

impl ContentHash {
    /// Validates a hash string.
    ///
    /// # Errors
    /// [`HashFormatError`] for anything but `sha256:<64 lowercase hex>`.
    pub fn parse(text: &str) -> Result<Self, HashFormatError> {
        let hex = text.strip_prefix("sha256:").ok_or(HashFormatError)?;
        if hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            Ok(Self(text.to_owned()))
        } else {
            Err(HashFormatError)
        }
    }

    /// The hash text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for ContentHash {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ContentHash {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Feeds bytes to SHA-256 and counts them, so content is hashed without an extra copy.
struct HashingWriter {
    hasher: Sha256,
    size: u64,
}

impl io::Write for HashingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.hasher.update(buf);
        self.size += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Content that has no JCS (RFC 8785) form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the content has no canonical JSON form: {0}")]
pub struct DigestError(String);

impl DigestError {
    pub(crate) fn new(why: String) -> Self {
        Self(why)
    }
}

/// The JCS (RFC 8785) hash and byte length of `content`.
///
/// # Errors
/// [`DigestError`] when the canonicaliser refuses the value (a `Value` parsed from JSON
/// always has a canonical form; this keeps the function total).
pub fn content_digest(content: &Value) -> Result<(ContentHash, u64), DigestError> {
    let mut writer = HashingWriter {
        hasher: Sha256::new(),
        size: 0,
    };
    serde_json_canonicalizer::to_writer(content, &mut writer)
        .map_err(|e| DigestError(e.to_string()))?;
    let hash = format!("sha256:{}", hex::encode(writer.hasher.finalize()));
    Ok((ContentHash(hash), writer.size))
}

/// Timestamps are kept to the microsecond, so that every replica orders versions alike
/// after a round trip through text.
#[must_use]
pub fn normalise_time(t: DateTime<Utc>) -> DateTime<Utc> {
    t.trunc_subsecs(6)
}

/// Serde for RFC 3339 timestamps with microseconds and a `Z`.
pub mod rfc3339 {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    /// `2026-11-24T10:00:00.123456Z`.
    #[must_use]
    pub fn format(t: DateTime<Utc>) -> String {
        t.to_rfc3339_opts(SecondsFormat::Micros, true)
    }

    /// Writes `2026-11-24T10:00:00.123456Z`.
    ///
    /// # Errors
    /// Only the serializer's own.
    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*t))
    }

    /// Reads any RFC 3339 timestamp, converted to UTC and cut to microseconds.
    ///
    /// # Errors
    /// When the text is not RFC 3339.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        DateTime::parse_from_rfc3339(&text)
            .map(|t| super::normalise_time(t.with_timezone(&Utc)))
            .map_err(serde::de::Error::custom)
    }

    /// The same for optional timestamps.
    pub mod option {
        use chrono::{DateTime, Utc};
        use serde::{Deserialize, Deserializer, Serializer};

        /// Writes the timestamp or `null`.
        ///
        /// # Errors
        /// Only the serializer's own.
        pub fn serialize<S: Serializer>(
            t: &Option<DateTime<Utc>>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match t {
                Some(t) => super::serialize(t, s),
                None => s.serialize_none(),
            }
        }

        /// Reads an RFC 3339 timestamp or `null`.
        ///
        /// # Errors
        /// When the text is not RFC 3339.
        pub fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<DateTime<Utc>>, D::Error> {
            #[derive(Deserialize)]
            struct Wrap(#[serde(with = "super")] DateTime<Utc>);
            Ok(Option::<Wrap>::deserialize(d)?.map(|Wrap(t)| t))
        }
    }
}

/// One stored version of an address's content. Its version number is not stored: it is
/// the position in the history, computed on read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Version {
    /// Unique within the address's history.
    pub id: EnvelopeId,
    /// Any JSON value (shared, so reads do not copy it; kept as text when read as text).
    pub content: Content,
    /// Media type of `content` (default `application/json`).
    pub content_type: String,
    /// Free-form metadata.
    pub metadata: Map<String, Value>,
    /// When the writer accepted it (microsecond precision).
    #[serde(with = "rfc3339")]
    pub created_at: DateTime<Utc>,
    /// JCS SHA-256 of `content`.
    pub hash: ContentHash,
    /// JCS byte length of `content`.
    pub size: u64,
    /// The authenticated principal that wrote it, when the writer knew one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub written_by: Option<PrincipalName>,
}

/// An envelope as clients see it: one version with its address and version number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(example = json!({
    "id": "0192f6c0-7c3a-7b7e-9a0e-2f5d1c9b8a11",
    "address": "ucxl://claude:architect@bzzz:v2-migration/decisions/protocol.json",
    "version": 3,
    "content": {"decision": "use libp2p"},
    "content_type": "application/json",
    "metadata": {"author": "claude", "reason": "chose libp2p"},
    "created_at": "2026-11-24T10:00:00.123456Z",
    "hash": "sha256:5c3ec7b6a0f1b0a8e1bd1d3a8d8cb1ed6f8a7fbfbd5c5b2e0d7c8a3b6e2f1a09",
    "size": 25
})))]
pub struct Envelope {
    /// The envelope id (Idempotency-Key or `UUIDv7`).
    #[cfg_attr(feature = "openapi", schema(value_type = String, min_length = 1, max_length = 128))]
    pub id: EnvelopeId,
    /// The canonical address (no temporal segment).
    pub address: Address,
    /// 1-based position in the address's current history.
    pub version: u32,
    /// The stored JSON value (any JSON).
    #[cfg_attr(feature = "openapi", schema(value_type = Value))]
    pub content: Content,
    /// Media type of `content`.
    pub content_type: String,
    /// Free-form metadata.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub metadata: Map<String, Value>,
    /// When it was written (RFC 3339, UTC, microseconds).
    #[serde(with = "rfc3339")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub created_at: DateTime<Utc>,
    /// `sha256:<hex>` of the JCS (RFC 8785) serialisation of `content`.
    #[cfg_attr(feature = "openapi", schema(value_type = String, pattern = "^sha256:[0-9a-f]{64}$"))]
    pub hash: ContentHash,
    /// Byte length of the JCS serialisation of `content`.
    pub size: u64,
    /// The authenticated principal that wrote this version (set by the gateway, never by
    /// the client); absent when it was written without authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, example = "architect-bot"))]
    pub written_by: Option<PrincipalName>,
}

impl Envelope {
    /// The stored version this envelope shows (without address and number).
    #[must_use]
    pub fn to_version(&self) -> Version {
        Version {
            id: self.id.clone(),
            content: self.content.clone(),
            content_type: self.content_type.clone(),
            metadata: self.metadata.clone(),
            created_at: self.created_at,
            hash: self.hash.clone(),
            size: self.size,
            written_by: self.written_by.clone(),
        }
    }

    /// The envelope view of a stored version.
    #[must_use]
    pub fn new(address: &Address, version: u32, stored: &Version) -> Self {
        Self {
            id: stored.id.clone(),
            address: address.without_temporal(),
            version,
            content: stored.content.clone(),
            content_type: stored.content_type.clone(),
            metadata: stored.metadata.clone(),
            created_at: stored.created_at,
            hash: stored.hash.clone(),
            size: stored.size,
            written_by: stored.written_by.clone(),
        }
    }
}

/// One line of an address's history: a version without its content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct VersionSummary {
    /// 1-based position in the history.
    pub version: u32,
    /// The envelope id.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub id: EnvelopeId,
    /// When it was written.
    #[serde(with = "rfc3339")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub created_at: DateTime<Utc>,
    /// `sha256:<hex>` of the content.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub hash: ContentHash,
    /// Byte length of the content.
    pub size: u64,
    /// Media type of the content.
    pub content_type: String,
    /// The authenticated principal that wrote it, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub written_by: Option<PrincipalName>,
}

/// The versions of an address since its last delete, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct History {
    /// The canonical address.
    pub address: Address,
    /// Oldest first.
    pub versions: Vec<VersionSummary>,
}

/// The latest version of one address that matched a search.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SearchItem {
    /// The canonical address.
    pub address: Address,
    /// The latest version number.
    pub version: u32,
    /// Its envelope id.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub id: EnvelopeId,
    /// When it was written.
    #[serde(with = "rfc3339")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub created_at: DateTime<Utc>,
    /// Media type of its content.
    pub content_type: String,
    /// Byte length of its content.
    pub size: u64,
    /// Its content's hash (absent in answers of nodes that do not send it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub hash: Option<ContentHash>,
    /// Who wrote it, when the gateway said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub written_by: Option<PrincipalName>,
}

impl VersionSummary {
    /// The summary of a stored version.
    #[must_use]
    pub fn new(version: u32, stored: &Version) -> Self {
        Self {
            version,
            id: stored.id.clone(),
            created_at: stored.created_at,
            hash: stored.hash.clone(),
            size: stored.size,
            content_type: stored.content_type.clone(),
            written_by: stored.written_by.clone(),
        }
    }
}

impl SearchItem {
    /// The search view of an address's latest version.
    #[must_use]
    pub fn new(address: &Address, version: u32, stored: &Version) -> Self {
        Self {
            address: address.without_temporal(),
            version,
            id: stored.id.clone(),
            created_at: stored.created_at,
            content_type: stored.content_type.clone(),
            size: stored.size,
            hash: Some(stored.hash.clone()),
            written_by: stored.written_by.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_printable_ascii_up_to_128_bytes() {
        assert!(EnvelopeId::parse("k").is_ok());
        assert!(EnvelopeId::parse("key with spaces inside").is_ok());
        assert!(EnvelopeId::parse(&"x".repeat(128)).is_ok());
        assert!(EnvelopeId::parse(&"x".repeat(129)).is_err());
        assert!(EnvelopeId::parse("").is_err());
        assert!(EnvelopeId::parse(" lead").is_err());
        assert!(EnvelopeId::parse("trail ").is_err());
        assert!(EnvelopeId::parse("tab\there").is_err());
        assert!(EnvelopeId::parse("caf\u{e9}").is_err());
    }

    #[test]
    fn generated_ids_are_uuid_v7_and_ordered() {
        let a = EnvelopeId::generate();
        let b = EnvelopeId::generate();
        let parsed = uuid::Uuid::parse_str(a.as_str()).expect("a uuid");
        assert_eq!(parsed.get_version_num(), 7);
        assert!(a < b, "UUIDv7 ids generated in order sort in order");
    }

    #[test]
    fn digest_is_jcs_sha256() {
        // RFC 8785: keys sorted, no whitespace, numbers in ECMAScript form.
        let content = serde_json::json!({"b": [1.0, 2, "x"], "a": {"z": null, "y": true}});
        let canonical = r#"{"a":{"y":true,"z":null},"b":[1,2,"x"]}"#;
        let (hash, size) = content_digest(&content).expect("canonical");
        let expected = format!(
            "sha256:{}",
            hex::encode(Sha256::digest(canonical.as_bytes()))
        );
        assert_eq!(hash.as_str(), expected);
        assert_eq!(size, canonical.len() as u64);
        // key order of the input does not matter
        let reordered = serde_json::json!({"a": {"y": true, "z": null}, "b": [1, 2, "x"]});
        assert_eq!(content_digest(&reordered).expect("canonical").0, hash);
    }

    #[test]
    fn hash_format_is_checked() {
        let (hash, _) = content_digest(&serde_json::json!(1)).expect("canonical");
        assert!(ContentHash::parse(hash.as_str()).is_ok());
        assert!(ContentHash::parse("sha256:abc").is_err());
        assert!(ContentHash::parse(&hash.as_str().to_uppercase()).is_err());
        assert!(ContentHash::parse(&hash.as_str().replace("sha256", "md5")).is_err());
    }

    #[test]
    fn timestamps_round_trip_with_microseconds() {
        #[derive(Serialize, Deserialize)]
        struct T(#[serde(with = "rfc3339")] DateTime<Utc>);
        let t: T = serde_json::from_str("\"2026-11-24T11:00:00.123456789+01:00\"").expect("parses");
        let text = serde_json::to_string(&t).expect("serialises");
        assert_eq!(text, "\"2026-11-24T10:00:00.123456Z\"");
        assert!(serde_json::from_str::<T>("\"yesterday\"").is_err());
    }
}
