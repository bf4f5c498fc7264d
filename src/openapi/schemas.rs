//! Named schemas of the answers, one per shape, so generated clients get names such as
//! `EnvelopeResponse` and `ErrorResponse` rather than `GetEnvelopeResponse200` for each
//! status of each operation.
//!
//! Each describes a type the handlers serialise (`ucxl::Success<T>`, `ucxl::Failure`) and is
//! built from that type's derived schema, its payload named: what is answered and what is
//! documented cannot drift apart.

use utoipa::openapi::RefOr;
use utoipa::openapi::schema::RefBuilder;
use utoipa::openapi::schema::{
    AdditionalProperties, ArrayBuilder, Discriminator, ObjectBuilder, OneOfBuilder, Ref, Schema,
    SchemaType, Type,
};
use utoipa::{PartialSchema, ToSchema};

use crate::routes::watch::ChangeEvent;

/// What `ToSchema::schemas` collects: each named schema a schema refers to.
type Schemas = Vec<(String, RefOr<Schema>)>;

/// A `$ref` to the named schema `name`, described.
fn reference(name: &str, description: &str) -> RefOr<Schema> {
    RefBuilder::new()
        .ref_location_from_schema_name(name)
        .description(Some(description))
        .into()
}

/// `schema` (an object) with `property` replaced by `with` and its description set.
fn with_property(
    mut schema: RefOr<Schema>,
    property: &str,
    with: RefOr<Schema>,
    description: Option<&str>,
) -> RefOr<Schema> {
    if let RefOr::T(Schema::Object(object)) = &mut schema {
        object.properties.insert(property.to_owned(), with);
        if let Some(description) = description {
            object.description = Some(description.to_owned());
        }
    }
    schema
}

/// `{"response": <body>}` with `data` of type `T`: what `Reply<T>` answers.
fn success<T: ToSchema>(body: &str, description: &str) -> RefOr<Schema> {
    with_property(
        ucxl::Success::<T>::schema(),
        "response",
        reference(body, "The answer."),
        Some(description),
    )
}

/// The body of [`success`]: code, message, `data` (a `$ref` to `T`), request id and time.
fn success_body<T: ToSchema>(description: &str) -> RefOr<Schema> {
    with_property(
        ucxl::SuccessBody::<T>::schema(),
        "data",
        reference(&T::name(), "The payload."),
        Some(description),
    )
}

/// Registers `T` and what it refers to.
fn register<T: ToSchema>(schemas: &mut Schemas) {
    schemas.push((T::name().into_owned(), T::schema()));
    T::schemas(schemas);
}

/// One named success answer per payload type: `$name` is `{"response": $body}`.
macro_rules! success_schemas {
    ($($(#[doc = $doc:literal])+ $name:ident, $body:ident, $data:ty;)*) => {$(
        $(#[doc = $doc])+
        #[derive(Debug)]
        pub struct $name;

        impl PartialSchema for $name {
            fn schema() -> RefOr<Schema> {
                success::<$data>(stringify!($body), concat!($($doc),+).trim())
            }
        }

        impl ToSchema for $name {
            fn schemas(schemas: &mut Schemas) {
                schemas.push((
                    stringify!($body).to_owned(),
                    success_body::<$data>(concat!("The body of `", stringify!($name), "`.")),
                ));
                register::<ucxl::Code>(schemas);
                register::<$data>(schemas);
            }
        }
    )*};
}

success_schemas! {
    /// An envelope: the version stored (`UCXL-201-CREATED`, or `UCXL-200-OK` when its id
    /// already existed, or `UCXL-202-ACCEPTED` when journaled) or the version fetched.
    EnvelopeResponse, EnvelopeResponseBody, ucxl::Envelope;
    /// The versions of an address, oldest first, without content.
    HistoryResponse, HistoryResponseBody, ucxl::History;
    /// One page of search matches, with the cursor of the next.
    SearchResponse, SearchResponseBody, crate::backend::SearchPage;
    /// A delete: the tombstone written (`UCXL-200-OK`, or `UCXL-202-ACCEPTED` when
    /// journaled).
    DeleteResponse, DeleteResponseBody, crate::backend::Deleted;
    /// Liveness or readiness.
    ProbeResponse, ProbeResponseBody, crate::routes::ops::Probe;
    /// The gateway's state.
    StatusResponse, StatusResponseBody, crate::routes::ops::Status;
    /// The backend mode now in force, and the one before.
    ModeChangeResponse, ModeChangeResponseBody, crate::routes::admin::ModeChange;
    /// What a configuration reload changed.
    ReloadResponse, ReloadResponseBody, crate::control::ReloadReport;
}

/// Every UCXL error answer: `{"error": ErrorBody}`.
#[derive(Debug)]
pub struct ErrorResponse;

impl PartialSchema for ErrorResponse {
    fn schema() -> RefOr<Schema> {
        with_property(
            ucxl::Failure::schema(),
            "error",
            reference("ErrorBody", "The error."),
            Some(
                "A UCXL error answer: the HTTP status is the middle number of `error.code`. \
                 `error.details` holds structured facts about the error (see `ErrorDetails`).",
            ),
        )
    }
}

impl ToSchema for ErrorResponse {
    fn schemas(schemas: &mut Schemas) {
        schemas.push((
            "ErrorBody".to_owned(),
            with_property(
                ucxl::FailureBody::schema(),
                "details",
                reference(
                    "ErrorDetails",
                    "Structured details (an object; empty when there are none).",
                ),
                Some("The body of `ErrorResponse`."),
            ),
        ));
        register::<ucxl::Code>(schemas);
        register::<ErrorDetails>(schemas);
    }
}

/// The `details` object of an error answer.
#[derive(Debug)]
pub struct ErrorDetails;

/// How a key of [`ErrorDetails`] is typed.
#[derive(Clone, Copy)]
enum Kind {
    /// A string.
    Text,
    /// A non-negative integer.
    Count,
    /// A string, an integer or `null` (an input as sent).
    Input,
    /// A string, or a list of strings.
    TextOrTexts,
    /// A list of strings.
    Texts,
    /// A list of `EndpointError`s.
    Endpoints,
    /// A `ClusterFailure`, or `null`.
    Cluster,
}

impl Kind {
    /// The property's schema, described.
    fn schema(self, description: &str) -> RefOr<Schema> {
        let text = || ObjectBuilder::new().schema_type(Type::String);
        let texts = || ArrayBuilder::new().items(text());
        match self {
            Self::Text => text().description(Some(description)).into(),
            Self::Count => count().description(Some(description)).into(),
            Self::Input => ObjectBuilder::new()
                .schema_type(SchemaType::from_iter([
                    Type::String,
                    Type::Integer,
                    Type::Null,
                ]))
                .description(Some(description))
                .into(),
            Self::TextOrTexts => OneOfBuilder::new()
                .item(text())
                .item(texts())
                .description(Some(description))
                .into(),
            Self::Texts => texts().description(Some(description)).into(),
            Self::Endpoints => ArrayBuilder::new()
                .items(RefOr::Ref(Ref::from_schema_name("EndpointError")))
                .description(Some(description))
                .into(),
            Self::Cluster => OneOfBuilder::new()
                .item(RefOr::Ref(Ref::from_schema_name("ClusterFailure")))
                .item(ObjectBuilder::new().schema_type(Type::Null))
                .description(Some(description))
                .into(),
        }
    }
}

fn count() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .minimum(Some(0))
}

/// The keys of error details that clients may rely on (the ones this gateway and its shared
/// crates set; a node's refusal passed on may carry others of its own).
const DETAILS: &[(&str, Kind, &str)] = &[
    (
        "field",
        Kind::Text,
        "The input that failed: an address or pattern component (`address`, `pattern`, \
         `scheme`, `agent`, `role`, `project`, `task`, `temporal`, `path`), a query parameter \
         (`limit`, `cursor`) or a header (`X-Rustle-Consistency`, `Last-Event-ID`).",
    ),
    (
        "provided",
        Kind::Input,
        "The input as sent (shortened past 160 bytes); `null` when it was absent.",
    ),
    (
        "expected",
        Kind::TextOrTexts,
        "The accepted form: a description, or the list of accepted values.",
    ),
    (
        "reason",
        Kind::Text,
        "Why it was refused: for addresses and JSON bodies a sentence; for watch cursors \
         one of `cursor_ahead`, `slow_consumer`, `gap` or the reason the cursor cannot be \
         continued.",
    ),
    (
        "header",
        Kind::Text,
        "The request header refused (`X-Request-Timeout-Ms`, `Idempotency-Key`).",
    ),
    (
        "query",
        Kind::Text,
        "What is wrong with the query string (an unknown, duplicate, missing or malformed \
         parameter).",
    ),
    (
        "path",
        Kind::Text,
        "Where in a JSON body the error is (`.` for the whole document, else the field path, \
         such as `content_type`); for an unknown route, the request path.",
    ),
    (
        "line",
        Kind::Count,
        "The line of a JSON body error (1-based).",
    ),
    (
        "column",
        Kind::Count,
        "The column of a JSON body error (1-based).",
    ),
    (
        "category",
        Kind::Text,
        "The kind of JSON body error: `syntax`, `data` (valid JSON of the wrong shape), `eof` \
         (cut short) or `io`.",
    ),
    (
        "limit_bytes",
        Kind::Count,
        "The largest body accepted, in bytes (413).",
    ),
    (
        "timeout_ms",
        Kind::Count,
        "The time the body was given to arrive, in milliseconds (408).",
    ),
    (
        "retry_after_seconds",
        Kind::Count,
        "Seconds until the caller may send again, as `Retry-After` says (429).",
    ),
    (
        "operation",
        Kind::Text,
        "The operation refused (`read`, `write`, `delete`, `search`, `watch`, `admin`) (403).",
    ),
    (
        "address",
        Kind::Text,
        "The address (or pattern) concerned: refused (403), with nothing stored (404), or not \
         held by the fallback cache (503).",
    ),
    (
        "attempts",
        Kind::Count,
        "Attempts made at BZZZ nodes (502, 503, 504).",
    ),
    (
        "endpoints",
        Kind::Endpoints,
        "Each BZZZ endpoint with the error of its attempt, or why it was not asked (502, \
         503, 504).",
    ),
    (
        "cluster",
        Kind::Cluster,
        "Why the cluster could not answer a read the fallback cache does not hold, when it \
         was asked (503).",
    ),
    (
        "max_in_flight",
        Kind::Count,
        "`RUSTLE_MAX_IN_FLIGHT`, reached (503, load shedding).",
    ),
    (
        "max_watches",
        Kind::Count,
        "`RUSTLE_MAX_WATCHES`, reached (503).",
    ),
    (
        "max_entries",
        Kind::Count,
        "`RUSTLE_CACHE_MAX_ENTRIES`, reached with versions that must be kept (507).",
    ),
    (
        "storage",
        Kind::Text,
        "`disk` when the local store's disk refused a write (503, 507).",
    ),
    (
        "mode",
        Kind::Text,
        "A backend mode: the one not available (409), or the one in force (503 on `/ready`).",
    ),
    (
        "problems",
        Kind::Texts,
        "One line per problem of a configuration that was not applied (400).",
    ),
];

impl PartialSchema for ErrorDetails {
    fn schema() -> RefOr<Schema> {
        let mut object = ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(Some(
                "Structured facts about an error. Every key is optional and which ones appear \
                 depends on the error; the keys listed are stable. Other keys may appear (a \
                 node's refusal is passed on with its own).",
            ))
            .additional_properties(Some(AdditionalProperties::<Schema>::FreeForm(true)));
        for &(key, kind, description) in DETAILS {
            object = object.property(key, kind.schema(description));
        }
        object.into()
    }
}

impl ToSchema for ErrorDetails {
    fn schemas(schemas: &mut Schemas) {
        schemas.push((
            "EndpointError".to_owned(),
            ObjectBuilder::new()
                .description(Some("One BZZZ endpoint and what went wrong there."))
                .property(
                    "url",
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .description(Some("The endpoint (`RUSTLE_BZZZ_ENDPOINTS`).")),
                )
                .property(
                    "error",
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .description(Some(
                            "The error of this request's attempt there, or else the last one \
                         known (an open breaker, a failed health check).",
                        )),
                )
                .required("url")
                .required("error")
                .into(),
        ));
        schemas.push((
            "ClusterFailure".to_owned(),
            ObjectBuilder::new()
                .description(Some("Why the BZZZ cluster could not answer."))
                .property(
                    "attempts",
                    count().description(Some("Attempts made at BZZZ nodes.")),
                )
                .property(
                    "endpoints",
                    Kind::Endpoints.schema("Each endpoint with its error."),
                )
                .required("attempts")
                .required("endpoints")
                .into(),
        ));
    }
}

/// The extra properties of a `put` event's data.
fn event_content(object: ObjectBuilder) -> ObjectBuilder {
    object
        .property(
            "content",
            ObjectBuilder::new()
                .schema_type(SchemaType::AnyValue)
                .description(Some(
                    "The version's content (any JSON), with `content=true`.",
                )),
        )
        .property(
            "content_omitted",
            ObjectBuilder::new()
                .schema_type(Type::Boolean)
                .description(Some(
                    "`true` when content was asked for and is larger than \
                 `RUSTLE_MAX_ANSWER_BYTES` or no longer readable.",
                )),
        )
}

/// The data of a `put` or `delete` event: one named schema per `op` (a flattened tagged
/// enum would be an `allOf` over a `oneOf`, which generators cannot make a class of).
impl PartialSchema for ChangeEvent {
    fn schema() -> RefOr<Schema> {
        let mut one_of = OneOfBuilder::new()
            .description(Some(
                "The data of a `put` or `delete` event of `GET /v1/watch`; `op` says which.",
            ))
            .discriminator(Some({
                let mut d = Discriminator::new("op");
                d.mapping
                    .insert("put".into(), "#/components/schemas/PutEvent".into());
                d.mapping
                    .insert("delete".into(), "#/components/schemas/DeleteEvent".into());
                d
            }));
        for name in ["PutEvent", "DeleteEvent"] {
            one_of = one_of.item(RefOr::Ref(Ref::from_schema_name(name)));
        }
        one_of.into()
    }
}

impl ToSchema for ChangeEvent {
    fn schemas(schemas: &mut Schemas) {
        let RefOr::T(Schema::OneOf(change)) = ucxl::Change::schema() else {
            return;
        };
        for variant in change.items {
            let RefOr::T(Schema::Object(object)) = variant else {
                continue;
            };
            let op = object
                .properties
                .get("op")
                .and_then(|op| match op {
                    RefOr::T(Schema::Object(op)) => op.enum_values.clone(),
                    _ => None,
                })
                .and_then(|values| values.first().and_then(|v| v.as_str().map(str::to_owned)));
            let (name, object) = match op.as_deref() {
                Some("put") => (
                    "PutEvent",
                    event_content(ObjectBuilder::from(object))
                        .description(Some("The data of a `put` event: a new version.")),
                ),
                Some("delete") => (
                    "DeleteEvent",
                    ObjectBuilder::from(object)
                        .description(Some("The data of a `delete` event: a tombstone.")),
                ),
                _ => continue,
            };
            schemas.push((name.to_owned(), object.into()));
        }
        register::<ucxl::Address>(schemas);
    }
}
