//! The `OpenAPI` 3.1 document, collected from the handlers' annotations (utoipa-axum), so it
//! cannot drift from the router. `rustle-gateway openapi` prints it; the committed copy in
//! `openapi/openapi.json` is checked by a test.

use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{HeaderBuilder, ObjectBuilder, OpenApi as Document, RefOr, Response, Type};
use utoipa::{Modify, OpenApi};

use crate::routes;

/// The document's fixed parts; paths come from the routers.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "RUSTLE Gateway",
        description = "One reliable, observable REST service for storing, fetching and searching versioned UCXL envelopes, in front of a cluster of BZZZ nodes.\n\nAddresses travel in the query string, URL-encoded: `ucxl://AGENT:ROLE@PROJECT:TASK[/TEMPORAL][/PATH]`. Every answer uses the UCXL format: `{\"response\": {code, message, data, request_id, timestamp}}` or `{\"error\": {code, message, details, source, path, request_id, timestamp}}`, and the HTTP status equals the code's middle number. Swagger UI is served at `/docs`.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    tags(
        (name = "envelopes", description = "Store, fetch and delete versioned envelopes by UCXL address"),
        (name = "search", description = "Find the latest envelope of every address matching a pattern"),
        (name = "watch", description = "Follow the changes to addresses matching a pattern, as server-sent events (`put`, `delete`, `synced`, `error`), resumable from any event's id"),
        (name = "operations", description = "Liveness, readiness, status and metrics"),
        (name = "admin", description = "Run-time control; needs the admin token or a principal granted `admin`"),
    ),
    components(schemas(routes::watch::ChangeEvent, routes::watch::SyncedEvent, ucxl::Change)),
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

/// The answers of routes behind authentication.
const AUTH_ERRORS: [(&str, &str); 3] = [
    (
        "401",
        "Missing, malformed or invalid credentials (`UCXL-401-UNAUTHORIZED`; `WWW-Authenticate: Bearer` says which, as RFC 6750 defines)",
    ),
    (
        "403",
        "The caller's grants do not allow this operation on this address (`UCXL-403-FORBIDDEN`, naming both)",
    ),
    (
        "429",
        "The caller's request rate is spent (`UCXL-429-TOO_MANY_REQUESTS`; `Retry-After` says when to retry)",
    ),
];

fn string_header(description: &str) -> RefOr<utoipa::openapi::Header> {
    RefOr::T(
        HeaderBuilder::new()
            .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
            .description(Some(description))
            .build(),
    )
}

/// Adds what every operation shares: the `X-Request-Id` header on every answer, the
/// `X-Rustle-*` headers on envelope and search answers, the error answers any route can
/// give (400 for a bad `X-Request-Timeout-Ms`, 405, 500, 503 when shedding load).
fn finish(mut doc: Document) -> Document {
    let failure = || -> RefOr<Response> {
        let mut response = Response::new("UCXL error");
        let schema = RefOr::Ref(utoipa::openapi::Ref::from_schema_name("Failure"));
        response.content.insert(
            "application/json".into(),
            RefOr::T(
                utoipa::openapi::content::ContentBuilder::new()
                    .schema(Some(schema))
                    .build(),
            ),
        );
        RefOr::T(response)
    };
    let shared_errors = [
        ("400", "Bad request: a malformed header or query parameter"),
        (
            "405",
            "Method not allowed on this path (`Allow` lists the methods)",
        ),
        (
            "500",
            "Internal error (opaque; the log has the cause under the request id)",
        ),
        (
            "503",
            "No backend can serve the request (`Retry-After` says when to retry)",
        ),
    ];
    for (path, item) in &mut doc.paths.paths {
        let served = path.starts_with("/v1/envelopes") || path.starts_with("/v1/search");
        let guarded = served || path.starts_with("/v1/admin/");
        for operation in [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
        ]
        .into_iter()
        .flatten()
        {
            if guarded {
                operation.security =
                    Some(vec![utoipa::openapi::security::SecurityRequirement::new::<
                        &str,
                        [&str; 0],
                        &str,
                    >(SECURITY_SCHEME, [])]);
            }
            let auth_errors = if guarded { &AUTH_ERRORS[..] } else { &[] };
            for &(status, description) in shared_errors.iter().chain(auth_errors) {
                operation
                    .responses
                    .responses
                    .entry(status.into())
                    .or_insert_with(|| {
                        let mut r = failure();
                        if let RefOr::T(r) = &mut r {
                            r.description = description.into();
                        }
                        r
                    });
            }
            for (status, response) in &mut operation.responses.responses {
                let RefOr::T(response) = response else {
                    continue;
                };
                response.headers.insert(
                    "X-Request-Id".into(),
                    string_header(
                        "The request id: the client's when it sent a valid one, else a UUIDv7",
                    ),
                );
                if served {
                    // Errors found before a backend is asked (a bad address, load shedding)
                    // carry none of these.
                    response.headers.insert(
                        "X-Rustle-Backend".into(),
                        string_header("Which backend answered or failed: real, fallback or mock"),
                    );
                    response.headers.insert(
                        "X-Rustle-Attempts".into(),
                        string_header("Attempts made (1 without retries)"),
                    );
                    response.headers.insert(
                        "X-Rustle-Endpoint".into(),
                        string_header(
                            "The BZZZ node that answered, a refusal included (real answers only)",
                        ),
                    );
                }
                if served && status.starts_with('2') {
                    response.headers.insert(
                        "X-Rustle-Stale".into(),
                        string_header("`true` when a fallback read may be out of date"),
                    );
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
    let (router, doc) = ApiRouter::with_openapi(ApiDoc::openapi())
        .merge(guard(routes::guarded()))
        .merge(routes::open())
        .split_for_parts();
    (router, finish(doc))
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
