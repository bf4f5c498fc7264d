//! The `OpenAPI` 3.1 document, collected from the handlers' annotations (utoipa-axum), so it
//! cannot drift from the router. `rustle-gateway openapi` prints it; the committed copy in
//! `openapi/openapi.json` is checked by a test.

pub mod schemas;

use std::collections::BTreeSet;

use utoipa::openapi::content::ContentBuilder;
use utoipa::openapi::path::Parameter;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    Header, HeaderBuilder, ObjectBuilder, OpenApi as Document, Ref, RefOr, Response, Schema, Type,
};
use utoipa::{Modify, OpenApi};

use crate::routes;

/// The document's fixed parts; paths come from the routers.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "RUSTLE Gateway",
        description = "One reliable, observable REST service for storing, fetching and searching versioned UCXL envelopes, in front of a cluster of BZZZ nodes.\n\nAddresses travel in the query string, URL-encoded: `ucxl://AGENT:ROLE@PROJECT:TASK[/TEMPORAL][/PATH]`. Every answer uses the UCXL format: `{\"response\": {code, message, data, request_id, timestamp}}` or `{\"error\": {code, message, details, source, path, request_id, timestamp}}`, and the HTTP status equals the code's middle number. Each answer's schema is named for clients (`EnvelopeResponse`, `SearchResponse`, ...; every error an `ErrorResponse`, whose `details` are an `ErrorDetails`). Swagger UI is served at `/docs`.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    tags(
        (name = "envelopes", description = "Store, fetch and delete versioned envelopes by UCXL address"),
        (name = "search", description = "Find the latest envelope of every address matching a pattern"),
        (name = "watch", description = "Follow the changes to addresses matching a pattern, as server-sent events (`put`, `delete`, `synced`, `error`), resumable from any event's id"),
        (name = "operations", description = "Liveness, readiness, status and metrics"),
        (name = "admin", description = "Run-time control; needs the admin token or a principal granted `admin`"),
    ),
    servers((url = "/", description = "This gateway: the address the document was fetched from")),
    components(schemas(routes::watch::ChangeEvent, routes::watch::SyncedEvent, schemas::ErrorResponse)),
    modifiers(&Bearer),
)]
struct ApiDoc;

struct Bearer;

/// The security scheme of every data and admin operation.
pub const SECURITY_SCHEME: &str = "bearer";

impl Modify for Bearer {
    fn modify(&self, openapi: &mut Document) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let mut scheme = Http::new(HttpAuthScheme::Bearer);
        scheme.description = Some(
            "An API key of the policy file (`rk_...`), a JWT (HS256, RS256 or ES256), or, on \
             admin routes, the admin token. Not needed when the gateway runs with \
             `RUSTLE_AUTH=none` (the default on a loopback address without a policy)."
                .into(),
        );
        components.add_security_scheme(SECURITY_SCHEME, SecurityScheme::Http(scheme));
    }
}

/// A response header's schema, described (generators read the description there too).
fn header(schema: ObjectBuilder, description: &str) -> RefOr<Header> {
    RefOr::T(
        HeaderBuilder::new()
            .schema(Some(schema.description(Some(description))))
            .description(Some(description))
            .build(),
    )
}

fn text() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::String)
}

fn count() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .minimum(Some(0))
}

fn one_of(values: &[&str]) -> ObjectBuilder {
    text().enum_values(Some(values.iter().copied()))
}

/// What the layers and extractors in front of an operation's handler can answer; the
/// handler's own answers are in its annotation, which wins where both name a status.
#[derive(Debug, Clone, Copy)]
struct Front<'a> {
    /// The operation's path.
    path: &'a str,
    /// Behind `authenticate` (401, 429) and the grants (403); its handler reads `Ctx`,
    /// which refuses a malformed `X-Request-Timeout-Ms` or `Idempotency-Key` (400).
    guarded: bool,
    /// Reads a JSON body (`ApiJson`): 400, 408, 413, 415.
    body: bool,
}

impl Front<'_> {
    /// Behind load shedding (503).
    fn sheds(self) -> bool {
        crate::resilience::shed::sheds(self.path)
    }

    /// Served by a backend: the `X-Rustle-*` headers, 503 when none can serve, 504 when
    /// the request deadline passes.
    fn served(self) -> bool {
        self.path.starts_with("/v1/envelopes") || self.path.starts_with("/v1/search")
    }

    /// The statuses these answer, with what they mean.
    fn answers(self) -> Vec<(&'static str, &'static str)> {
        let mut answers = Vec::new();
        if self.guarded {
            answers.extend([
                (
                    "401",
                    "Missing, malformed or invalid credentials (`UCXL-401-UNAUTHORIZED`; \
                     `WWW-Authenticate: Bearer` says which, as RFC 6750 defines)",
                ),
                (
                    "429",
                    "The caller's request rate is spent (`UCXL-429-TOO_MANY_REQUESTS`; \
                     `Retry-After` says when to retry)",
                ),
                (
                    "403",
                    "The caller's grants do not allow this operation here \
                     (`UCXL-403-FORBIDDEN`, naming both)",
                ),
                (
                    "400",
                    "A malformed `X-Request-Timeout-Ms` or `Idempotency-Key` header \
                     (`UCXL-400-BAD_REQUEST`)",
                ),
            ]);
        }
        if self.body {
            answers.extend([
                (
                    "415",
                    "Content-Type is not `application/json` (`UCXL-415-UNSUPPORTED_MEDIA_TYPE`)",
                ),
                (
                    "413",
                    "The body is larger than `RUSTLE_MAX_BODY_BYTES` (`UCXL-413-PAYLOAD_TOO_LARGE`)",
                ),
                (
                    "408",
                    "The body did not arrive within the request deadline \
                     (`X-Request-Timeout-Ms` or `RUSTLE_REQUEST_TIMEOUT_MS`; \
                     `UCXL-408-REQUEST_TIMEOUT`)",
                ),
                (
                    "400",
                    "The body is not the JSON the route takes (`UCXL-400-INVALID_PAYLOAD`, \
                     with line, column and field path)",
                ),
            ]);
        }
        match (self.sheds(), self.served()) {
            (true, true) => answers.push((
                "503",
                "Load shedding (`RUSTLE_MAX_IN_FLIGHT` requests are in flight, \
                 `details.max_in_flight`), or no backend can serve the request: no BZZZ node \
                 could answer (`details.endpoints`) and no fallback holds the answer \
                 (`UCXL-503-SERVICE_UNAVAILABLE`; `Retry-After` says when to retry)",
            )),
            (true, false) => answers.push((
                "503",
                "Load shedding: `RUSTLE_MAX_IN_FLIGHT` requests are in flight \
                 (`UCXL-503-SERVICE_UNAVAILABLE`; `Retry-After` says when to retry)",
            )),
            (false, true) => answers.push((
                "503",
                "No backend can serve the request: no BZZZ node could answer and no \
                 fallback holds the answer (`UCXL-503-SERVICE_UNAVAILABLE`; `Retry-After` \
                 says when to retry)",
            )),
            (false, false) => {}
        }
        if self.served() {
            answers.extend([(
                "504",
                "The request deadline (`X-Request-Timeout-Ms` or \
                     `RUSTLE_REQUEST_TIMEOUT_MS`) passed before a backend answered \
                     (`UCXL-504-GATEWAY_TIMEOUT`)",
            )]);
        }
        answers.push((
            "500",
            "Internal error (`UCXL-500-INTERNAL_ERROR`, opaque; the log has the cause under \
             the request id)",
        ));
        answers
    }
}

/// An error answer: the UCXL error body.
fn failure(description: &str) -> RefOr<Response> {
    let mut response = Response::new(description);
    response.content.insert(
        "application/json".into(),
        RefOr::T(
            ContentBuilder::new()
                .schema(Some(RefOr::Ref(Ref::from_schema_name("ErrorResponse"))))
                .build(),
        ),
    );
    RefOr::T(response)
}

/// The headers of an answer with `status` of an operation behind `front`.
fn headers_of(status: &str, front: Front<'_>) -> Vec<(&'static str, RefOr<Header>)> {
    let mut headers = vec![(
        "X-Request-Id",
        header(
            text().pattern(Some("^[!-~]{1,128}$")),
            "The request id: the client's `X-Request-Id` when it sent 1..=128 visible ASCII \
             characters, else a UUIDv7; error bodies and the log carry it too",
        ),
    )];
    match status {
        "401" => headers.push((
            "WWW-Authenticate",
            header(
                text(),
                "`Bearer realm=\"rustle\"`, with `error=\"invalid_request\"` or \
                 `error=\"invalid_token\"` when credentials were sent (RFC 6750)",
            ),
        )),
        "403" if front.guarded => headers.push((
            "WWW-Authenticate",
            header(
                text(),
                "`Bearer realm=\"rustle\", error=\"insufficient_scope\"` when the caller's \
                 grants refuse (RFC 6750); absent when the admin API is disabled",
            ),
        )),
        "429" | "503" => headers.push((
            "Retry-After",
            header(count(), "Seconds to wait before retrying (RFC 9110)"),
        )),
        _ => {}
    }
    // Refusals made before a backend is asked (credentials, grants, rate, the body) never
    // carry these; other errors carry them when a backend was asked (not for a bad
    // address or load shedding, say).
    if front.served() && !matches!(status, "401" | "403" | "408" | "415" | "429") {
        headers.extend([
            (
                "X-Rustle-Backend",
                header(
                    one_of(&["mock", "real", "fallback", "cache"]),
                    "Which backend answered or failed: `mock` (the local backend as the \
                     configured mode), `real` (a BZZZ node), `fallback` (the local backend \
                     standing in for an unreachable cluster) or `cache` (the gateway's cache, \
                     kept current by the nodes' change feeds)",
                ),
            ),
            (
                "X-Rustle-Attempts",
                header(count(), "Attempts made (1 without retries)"),
            ),
            (
                "X-Rustle-Endpoint",
                header(
                    text(),
                    "The BZZZ node that answered, a refusal included (real answers only)",
                ),
            ),
        ]);
        if status.starts_with('2') {
            headers.push((
                "X-Rustle-Stale",
                header(
                    one_of(&["true"]),
                    "`true` when a fallback read may be out of date; absent otherwise",
                ),
            ));
        }
        if front.path == "/v1/envelopes" {
            headers.extend([
                (
                    "X-Rustle-Cache",
                    header(
                        one_of(&["hit", "miss"]),
                        "With `X-Rustle-Consistency: cached`: `hit` when the gateway's cache \
                         answered, `miss` when a node did",
                    ),
                ),
                (
                    "X-Rustle-Feed-Lag-Ms",
                    header(
                        count(),
                        "With `X-Rustle-Consistency: cached`: how far behind the nodes the \
                         cache could be: how long ago the least recently heard node feed \
                         last spoke, in milliseconds",
                    ),
                ),
            ]);
        }
    }
    headers
}

/// Copies a parameter's description into its schema, where generators read it, and the
/// schema's into the parameter where only the schema has one.
fn describe_parameter(parameter: &mut Parameter) {
    let Some(schema) = &mut parameter.schema else {
        return;
    };
    let in_schema = match schema {
        RefOr::T(Schema::Object(object)) => &mut object.description,
        RefOr::T(Schema::Array(array)) => &mut array.description,
        RefOr::T(Schema::OneOf(one_of)) => &mut one_of.description,
        _ => return,
    };
    match (&parameter.description, &in_schema) {
        (Some(description), None) => *in_schema = Some(description.clone()),
        (None, Some(description)) => parameter.description = Some(description.clone()),
        _ => {}
    }
}

/// Adds what the layers in front of the handlers answer (see [`Front`]), the headers of
/// every answer, and descriptions inside every parameter's schema.
fn finish(mut doc: Document, guarded: &BTreeSet<String>) -> Document {
    for (path, item) in &mut doc.paths.paths {
        for operation in [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
        ]
        .into_iter()
        .flatten()
        {
            let front = Front {
                path,
                guarded: guarded.contains(path),
                body: operation.request_body.is_some(),
            };
            if front.guarded {
                operation.security = Some(vec![SecurityRequirement::new::<&str, [&str; 0], &str>(
                    SECURITY_SCHEME,
                    [],
                )]);
            }
            for (status, description) in front.answers() {
                operation
                    .responses
                    .responses
                    .entry(status.into())
                    .or_insert_with(|| failure(description));
            }
            for (status, response) in &mut operation.responses.responses {
                let RefOr::T(response) = response else {
                    continue;
                };
                for (name, header) in headers_of(status, front) {
                    response.headers.insert(name.into(), header);
                }
            }
            for parameter in operation.parameters.iter_mut().flatten() {
                if let RefOr::T(parameter) = parameter {
                    describe_parameter(parameter);
                }
            }
        }
    }
    doc
}

type ApiRouter = utoipa_axum::router::OpenApiRouter<crate::state::AppState>;

/// The routes with their collected document; `guard` adds the layers of the routes that
/// need a caller (data and admin).
pub fn parts(
    guard: impl FnOnce(ApiRouter) -> ApiRouter,
) -> (axum::Router<crate::state::AppState>, Document) {
    let guarded = routes::guarded()
        .into_openapi()
        .paths
        .paths
        .into_keys()
        .collect();
    let (router, doc) = ApiRouter::with_openapi(ApiDoc::openapi())
        .merge(guard(routes::guarded()))
        .merge(routes::open())
        .split_for_parts();
    (router, finish(doc, &guarded))
}

/// The `OpenAPI` document as served at `/openapi.json`.
#[must_use]
pub fn document() -> Document {
    parts(|r| r).1
}

/// The document as committed in `openapi/openapi.json` (pretty JSON, trailing newline).
///
/// # Errors
/// Only if serialisation fails, which a valid document never does.
pub fn document_json() -> Result<String, serde_json::Error> {
    serde_json::to_string_pretty(&document()).map(|mut s| {
        s.push('\n');
        s
    })
}
