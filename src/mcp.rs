//! `/mcp`: the gateway as a Model Context Protocol server (Streamable HTTP, stateless).
//!
//! Every tool and resource call goes through the same functions as its REST route
//! (`routes::envelopes::{store, fetch, versions, remove}`, `routes::search::run`), with the
//! same request context: the caller the `authenticate` layer found, the request id, the
//! deadline, the audit slot. So mode, retries, fallback, journal, metrics and grants are
//! the REST API's. Domain errors are tool results with `isError: true` carrying the UCXL
//! code; JSON-RPC errors are kept for protocol problems.
//!
//! Stateless: no session is kept, so any gateway process answers any request, and each
//! answer is one JSON body (no event stream).

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use rmcp::model::{
    AnnotateAble, CallToolRequestParams, CallToolResult, ClientJsonRpcMessage, ClientRequest,
    Content, Implementation, InitializeRequestParams, InitializeResult, JsonRpcMessage,
    JsonRpcRequest, ListResourceTemplatesResult, ListResourcesResult, ListToolsResult,
    PaginatedRequestParams, ProtocolVersion, RawResource, RawResourceTemplate,
    ReadResourceRequestParams, ReadResourceResult, ResourceContents, ServerCapabilities,
    ServerInfo, ServerJsonRpcMessage, ServerResult, Tool, ToolAnnotations,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, RoleServer, ServerHandler};
use schemars::JsonSchema;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};
use ucxl::EnvelopeId;
use ucxl_service::{ErrorReport, Reply};

use crate::auth::Op;
use crate::error::ApiError;
use crate::extract::Ctx;
use crate::reply::Failed;
use crate::routes::envelopes::{self, PutEnvelope};
use crate::routes::search::{self, SearchParams};
use crate::state::AppState;

/// What a model is told an address is.
const ADDRESS_HELP: &str = "A UCXL address: ucxl://AGENT:ROLE@PROJECT:TASK/[TEMPORAL/]PATH. \
AGENT, ROLE, PROJECT and TASK are 1-64 characters of [A-Za-z0-9_-]; PATH is segments of \
[A-Za-z0-9_.-] separated by '/'. TEMPORAL selects a version when reading: '*^' the latest \
(the default), '*~' the first, '*~N' version N, '~~N' N versions back from the latest, '^^N' \
N forward from the first; writes and deletes take none (or '*^'). \
Example: ucxl://claude:architect@bzzz:design/*^/decisions/transport.json";

/// What a model is told a pattern is.
const PATTERN_HELP: &str = "A UCXL pattern: an address where 'any' or '*' stands for any \
agent, role, project or task, and in the path '*' matches within one segment, '?' one \
character and '**' any number of segments. An empty path matches only the empty path. \
Example: ucxl://any:any@bzzz:any/decisions/**";

/// The pattern `resources/list` pages through: every address.
const EVERY_ADDRESS: &str = "ucxl://any:any@any:any/**";

/// The resource template of an address.
pub const ADDRESS_TEMPLATE: &str = "ucxl://{agent}:{role}@{project}:{task}/{path}";

/// Arguments of `ucxl_store`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StoreArgs {
    /// Where to store: a UCXL address without a temporal segment, e.g.
    /// `ucxl://claude:architect@bzzz:design/decisions/transport.json`.
    #[schemars(description = ADDRESS_HELP)]
    pub address: String,
    /// The content: any JSON value.
    pub content: Value,
    /// Media type of `content` (default `application/json`), e.g. `text/markdown`.
    pub content_type: Option<String>,
    /// Free-form metadata object, e.g. `{"reason": "chose libp2p"}`.
    pub metadata: Option<Map<String, Value>>,
    /// The envelope id: calling again with the same key stores nothing new and returns the
    /// first result (1-128 printable ASCII characters). Use one per logical write to make
    /// retries safe.
    pub idempotency_key: Option<String>,
}

/// Arguments of `ucxl_fetch` and `ucxl_history`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AddressArgs {
    /// The address to read (a temporal segment selects a version).
    #[schemars(description = ADDRESS_HELP)]
    pub address: String,
}

/// Arguments of `ucxl_delete`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeleteArgs {
    /// The address to delete (no temporal segment).
    #[schemars(description = ADDRESS_HELP)]
    pub address: String,
    /// The delete's id: calling again with the same key is a no-op.
    pub idempotency_key: Option<String>,
}

/// Arguments of `ucxl_search`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchArgs {
    /// What to match.
    #[schemars(description = PATTERN_HELP)]
    pub pattern: String,
    /// Page size, 1-1000 (default 50).
    #[schemars(range(min = 1, max = 1000))]
    pub limit: Option<usize>,
    /// `next_cursor` of the previous page, to read the next one.
    pub cursor: Option<String>,
    /// Only envelopes of this media type, e.g. `application/json`.
    pub content_type: Option<String>,
}

/// The tools, built once: the SDK looks a tool up on every call, and generating the
/// schemas is most of the cost of a call.
static TOOLS: std::sync::LazyLock<Vec<Tool>> = std::sync::LazyLock::new(build_tools);

/// The tools, in the order `tools/list` gives them.
#[must_use]
pub fn tools() -> Vec<Tool> {
    TOOLS.clone()
}

fn build_tools() -> Vec<Tool> {
    use rmcp::handler::server::common::schema_for_type;
    vec![
        Tool::new(
            "ucxl_store",
            "Store a new version of a context envelope at a UCXL address. Returns the stored \
             envelope (version, id, hash). Example address: \
             ucxl://claude:architect@bzzz:design/decisions/transport.json",
            schema_for_type::<StoreArgs>(),
        )
        .with_annotations(ToolAnnotations::new().read_only(false).destructive(false).idempotent(false)),
        Tool::new(
            "ucxl_fetch",
            "Fetch the envelope a UCXL address selects: the latest version, or the one its \
             temporal segment names (e.g. ucxl://claude:architect@bzzz:design/*~1/decisions/transport.json \
             for version 1).",
            schema_for_type::<AddressArgs>(),
        )
        .with_annotations(ToolAnnotations::new().read_only(true)),
        Tool::new(
            "ucxl_history",
            "List the versions of a UCXL address, oldest first (without content).",
            schema_for_type::<AddressArgs>(),
        )
        .with_annotations(ToolAnnotations::new().read_only(true)),
        Tool::new(
            "ucxl_search",
            "Search: the latest version of every address matching a UCXL pattern, sorted by \
             address, one page at a time (pass next_cursor back as cursor). Example pattern: \
             ucxl://any:any@bzzz:any/decisions/**",
            schema_for_type::<SearchArgs>(),
        )
        .with_annotations(ToolAnnotations::new().read_only(true)),
        Tool::new(
            "ucxl_delete",
            "Delete a UCXL address (reads then answer not found; a later store starts a new \
             history at version 1).",
            schema_for_type::<DeleteArgs>(),
        )
        .with_annotations(ToolAnnotations::new().read_only(false).destructive(true).idempotent(true)),
    ]
}

/// The MCP server: one per request (stateless), cheap to build.
#[derive(Debug, Clone)]
pub struct Gateway {
    state: AppState,
}

/// The `/mcp` service: stateless, JSON answers. Requests reach it through the same layers
/// as the REST data routes (load shedding, audit, authentication).
#[must_use]
pub fn service(state: AppState) -> StreamableHttpService<Gateway, NeverSessionManager> {
    let config = state.config.load();
    let mut transport = StreamableHttpServerConfig::default()
        .with_stateful_mode(false)
        .with_json_response(true)
        .with_sse_keep_alive(None)
        .with_cancellation_token(state.background.child_token());
    if !config.listen_addr.ip().is_loopback() {
        // Off loopback the gateway needs credentials (see Security): the Host check
        // against DNS rebinding is for unauthenticated local servers, and would refuse
        // every name this deployment is reached by.
        transport = transport.disable_allowed_hosts();
    }
    drop(config);
    StreamableHttpService::new(
        move || {
            Ok(Gateway {
                state: state.clone(),
            })
        },
        Arc::new(NeverSessionManager::default()),
        transport,
    )
}

/// The `/mcp` route: `tools/call` requests answered directly ([`handle`]), every other
/// message by the SDK's Streamable HTTP service. `POST` only: a stateless transport has no
/// `GET` stream and no session to `DELETE` (the SDK would answer both 405 with `Allow:
/// POST`, as the router now does), and `OPTIONS` gets the router's 204 like every route.
pub fn route(state: AppState) -> axum::routing::MethodRouter<AppState> {
    let sdk = Arc::new(service(state));
    axum::routing::post(
        move |axum::extract::State(state): axum::extract::State<AppState>,
              request: axum::extract::Request| {
            let sdk = Arc::clone(&sdk);
            async move { handle(&state, &sdk, request).await }
        },
    )
}

/// The SDK's stateless transport serves each request by building a server peer, a one-shot
/// transport and a task for it, then waiting on a channel for the answer: most of the cost
/// of a tool call. A `tools/call` that passes every check the transport makes (`Accept`,
/// `Content-Type`, `MCP-Protocol-Version`, the `Host` allow-list) is answered here instead,
/// with the same handler and the SDK's own message types, so the answer is the one the SDK
/// would give. Anything else, or anything the checks would refuse, goes to the SDK, which
/// answers it (or refuses it) as before. Hand-written because the SDK has no cheaper
/// stateless entry point.
async fn handle(
    state: &AppState,
    sdk: &StreamableHttpService<Gateway, NeverSessionManager>,
    request: axum::extract::Request,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    if !direct(state, &request) {
        return sdk.handle(request).await.into_response();
    }
    let (mut parts, body) = request.into_parts();
    let (limit, timeout) = {
        let config = state.config.load();
        (config.max_body_bytes, config.request_timeout)
    };
    let read = http_body_util::Limited::new(body, limit);
    let bytes = match tokio::time::timeout(timeout, http_body_util::BodyExt::collect(read)).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return ApiError::Body(ucxl_service::BodyError::TooLarge { limit }).into_response();
        }
        Ok(Err(_)) => return ApiError::Body(ucxl_service::BodyError::Unreadable).into_response(),
        Err(_) => {
            return ApiError::Body(ucxl_service::BodyError::Timeout {
                timeout_ms: timeout.as_millis(),
            })
            .into_response();
        }
    };
    // A `tools/call` request read straight into its parts (the SDK's message enum tries
    // its variants one by one); anything else is read as the SDK reads it.
    let call = match serde_json::from_slice::<ToolCall>(&bytes) {
        Ok(call) if call.method == "tools/call" => Some((call.id, call.params)),
        _ => match serde_json::from_slice::<ClientJsonRpcMessage>(&bytes) {
            Ok(JsonRpcMessage::Request(JsonRpcRequest {
                id,
                request: ClientRequest::CallToolRequest(call),
                ..
            })) => Some((id, call.params)),
            _ => None,
        },
    };
    let Some((id, params)) = call else {
        let request = axum::extract::Request::from_parts(parts, axum::body::Body::from(bytes));
        return sdk.handle(request).await.into_response();
    };
    let gateway = Gateway {
        state: state.clone(),
    };
    let context = gateway.context_of(&mut parts).await;
    let message: ServerJsonRpcMessage = match gateway.call(params, context).await {
        Ok(result) => JsonRpcMessage::response(ServerResult::CallToolResult(result), id),
        Err(error) => JsonRpcMessage::error(error, Some(id)),
    };
    match serde_json::to_vec(&message) {
        Ok(body) => (
            [(
                axum::http::header::CONTENT_TYPE,
                axum::http::HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response(),
        Err(e) => ApiError::internal(e).into_response(),
    }
}

/// A JSON-RPC request whose params are a tool call's.
#[derive(Deserialize)]
struct ToolCall {
    #[allow(dead_code)] // checked by its type: "2.0"
    jsonrpc: rmcp::model::JsonRpcVersion2_0,
    id: rmcp::model::RequestId,
    method: String,
    params: CallToolRequestParams,
}

/// Whether the SDK's transport would take `request` as a stateless JSON-RPC POST: the
/// checks it makes, in its order, each on the safe side (what is not surely accepted goes
/// to the SDK).
fn direct(state: &AppState, request: &axum::extract::Request) -> bool {
    let headers = request.headers();
    let text = |name: axum::http::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let loopback = state.config.load().listen_addr.ip().is_loopback();
    // The DNS-rebinding allow-list is in force on loopback only (see `service`).
    let host_allowed = !loopback
        || text(axum::http::header::HOST)
            .and_then(|h| axum::http::uri::Authority::try_from(h).ok())
            .is_some_and(|a| {
                matches!(
                    a.host().trim_start_matches('[').trim_end_matches(']'),
                    "localhost" | "127.0.0.1" | "::1"
                )
            });
    let accepts = text(axum::http::header::ACCEPT)
        .is_some_and(|a| a.contains("application/json") && a.contains("text/event-stream"));
    let json =
        text(axum::http::header::CONTENT_TYPE).is_some_and(|c| c.starts_with("application/json"));
    let version = match headers.get("mcp-protocol-version") {
        None => true,
        Some(v) => v.to_str().is_ok_and(|v| {
            ProtocolVersion::KNOWN_VERSIONS
                .iter()
                .any(|known| known.as_str() == v)
        }),
    };
    request.method() == axum::http::Method::POST && host_allowed && accepts && json && version
}

/// A tool's answer: structured content and a short text, or an error result.
type ToolAnswer = Result<Value, Failed>;

/// The success result: the data as structured content, and a short text (the code, the
/// message, then the data as JSON for clients that read only text).
fn success<T: serde::Serialize>(reply: Reply<T>) -> ToolAnswer {
    let code = reply.code();
    let message = reply.message().to_owned();
    let data = serde_json::to_value(reply.into_data()).map_err(ApiError::internal)?;
    Ok(json!({"code": code.as_str(), "message": message, "data": data}))
}

/// The tool result of a failed call: `isError`, with the UCXL code, message and details.
#[must_use]
pub fn error_result(report: &ErrorReport, request_id: &str) -> CallToolResult {
    let mut result = CallToolResult::structured_error(json!({
        "code": report.code.as_str(),
        "message": report.message,
        "details": report.details,
        "request_id": request_id,
    }));
    result.content = vec![Content::text(format!(
        "{}: {}",
        report.code.as_str(),
        report.message
    ))];
    result
}

/// The arguments of a call as `T`; what does not fit is an `INVALID_PAYLOAD` tool error
/// naming the field, so a model can correct itself.
///
/// # Errors
/// Arguments that are not a `T`.
pub fn arguments<T: DeserializeOwned>(given: Option<Map<String, Value>>) -> Result<T, ApiError> {
    serde_json::from_value(Value::Object(given.unwrap_or_default())).map_err(|e| {
        ApiError::InvalidPayload {
            message: format!("invalid arguments: {e}"),
            details: json!({"expected": "the tool's input schema"}),
        }
    })
}

/// A tool's `idempotency_key` as an envelope id.
fn idempotency_key(given: Option<&str>) -> Result<Option<EnvelopeId>, ApiError> {
    given
        .map(|key| {
            EnvelopeId::parse(key).map_err(|_| {
                ApiError::bad_request(
                    "idempotency_key must be 1 to 128 printable ASCII characters",
                    json!({"field": "idempotency_key", "expected": "1..=128 printable ASCII characters, no leading or trailing space"}),
                )
            })
        })
        .transpose()
}

impl Gateway {
    /// The request context of this MCP request: the same extractor as the REST routes,
    /// over the HTTP request that carried it. The idempotency key comes from the tool's
    /// arguments, not from a header (one HTTP request may not carry one per tool).
    async fn context(&self, request: &RequestContext<RoleServer>) -> Result<Ctx, ApiError> {
        let mut parts = request
            .extensions
            .get::<Parts>()
            .cloned()
            // The Streamable HTTP transport always hands the request's parts on.
            .ok_or_else(|| ApiError::internal(std::io::Error::other("no HTTP request parts")))?;
        self.context_of(&mut parts).await
    }

    /// The request context of the HTTP request `parts`.
    async fn context_of(&self, parts: &mut Parts) -> Result<Ctx, ApiError> {
        let mut ctx = Ctx::from_request_parts(parts, &self.state).await?;
        ctx.idempotency_key = None;
        Ok(ctx)
    }

    /// A `tools/call`, for the caller of `context` (or its refusal): what both the SDK's
    /// dispatch and the direct path of [`handle`] run.
    async fn call(
        &self,
        request: CallToolRequestParams,
        context: Result<Ctx, ApiError>,
    ) -> Result<CallToolResult, ErrorData> {
        let name = request.name.to_string();
        if !is_tool(&name) {
            return Err(ErrorData::invalid_params(
                format!("no tool {name:?}"),
                Some(json!({"tools": tools().iter().map(|t| t.name.clone()).collect::<Vec<_>>()})),
            ));
        }
        let mut ctx = match context {
            Ok(ctx) => ctx,
            Err(e) => {
                let failed = Failed::from(e);
                log_failure(&name, "", &failed);
                return Ok(error_result(&failed.error().report(), ""));
            }
        };
        let answer = self.run(&mut ctx, &name, request.arguments).await;
        let request_id = ctx.request_id().to_owned();
        let code = match &answer {
            Ok(answer) => answer["code"]
                .as_str()
                .and_then(|c| ucxl::Code::parse(c).ok()),
            Err(failed) => Some(failed.error().code()),
        };
        if let Some(code) = code {
            ctx.audit.outcome(code);
        }
        let (outcome, result) = match answer {
            Ok(answer) => {
                let outcome = answer["code"].as_str().unwrap_or("ok").to_owned();
                let text = summary(&answer);
                // What `CallToolResult::structured` gives, without the JSON text it makes
                // of the value only for it to be replaced by the summary.
                let mut result = CallToolResult::default();
                result.content = vec![Content::text(text)];
                result.structured_content = Some(answer);
                result.is_error = Some(false);
                (outcome, result)
            }
            Err(failed) => {
                log_failure(&name, &request_id, &failed);
                let report = failed.error().report();
                (
                    report.code.as_str().to_owned(),
                    error_result(&report, &request_id),
                )
            }
        };
        tracing::info!(request_id, tool = %name, outcome, "MCP tool call");
        metrics::counter!("rustle_mcp_calls_total", "tool" => name, "outcome" => outcome)
            .increment(1);
        Ok(result)
    }

    /// Runs tool `name` for the caller of `ctx`.
    async fn run(&self, ctx: &mut Ctx, name: &str, args: Option<Map<String, Value>>) -> ToolAnswer {
        let state = &self.state;
        let permit = |ctx: &Ctx, op: Op, raw: &str| {
            crate::auth::http::permit(state, &ctx.caller, Some(&ctx.audit), op, raw)
        };
        match name {
            "ucxl_store" => {
                let args: StoreArgs = arguments(args)?;
                let address = permit(ctx, Op::Write, &args.address)?;
                let key = idempotency_key(args.idempotency_key.as_deref())?;
                ctx.idempotency_key = key;
                let body = PutEnvelope {
                    content: args.content,
                    content_type: args.content_type,
                    metadata: args.metadata,
                };
                success(envelopes::store(state, ctx, &address, body).await?)
            }
            "ucxl_fetch" => {
                let args: AddressArgs = arguments(args)?;
                let address = permit(ctx, Op::Read, &args.address)?;
                success(envelopes::fetch(state, ctx, &address).await?)
            }
            "ucxl_history" => {
                let args: AddressArgs = arguments(args)?;
                let address = permit(ctx, Op::Read, &args.address)?;
                success(envelopes::versions(state, ctx, &address).await?)
            }
            "ucxl_delete" => {
                let args: DeleteArgs = arguments(args)?;
                let address = permit(ctx, Op::Delete, &args.address)?;
                let key = idempotency_key(args.idempotency_key.as_deref())?;
                ctx.idempotency_key = key;
                success(envelopes::remove(state, ctx, &address).await?)
            }
            "ucxl_search" => {
                let args: SearchArgs = arguments(args)?;
                let params = SearchParams {
                    pattern: args.pattern,
                    limit: args.limit,
                    cursor: args.cursor,
                    content_type: args.content_type,
                };
                success(search::run(state, ctx, params).await?)
            }
            // `call_tool` checks the name first.
            other => Err(ApiError::bad_request(
                format!("no tool {other:?}"),
                json!({"tool": other}),
            )
            .into()),
        }
    }
}

/// Whether `name` is one of ours.
fn is_tool(name: &str) -> bool {
    matches!(
        name,
        "ucxl_store" | "ucxl_fetch" | "ucxl_history" | "ucxl_search" | "ucxl_delete"
    )
}

/// A short text for a successful call.
fn summary(answer: &Value) -> String {
    let code = answer["code"].as_str().unwrap_or_default();
    let message = answer["message"].as_str().unwrap_or_default();
    // `to_string` writes the same compact JSON as `Display`, without the formatter.
    let data = serde_json::to_string(&answer["data"]).unwrap_or_default();
    format!("{code}: {message}\n{data}")
}

/// A domain error where MCP has no tool result to carry it (resources): a JSON-RPC error
/// with the UCXL code, message and details as its data.
fn protocol_error(failed: &Failed) -> ErrorData {
    let report = failed.error().report();
    let data = Some(json!({
        "code": report.code.as_str(),
        "message": report.message,
        "details": report.details,
    }));
    let message = format!("{}: {}", report.code.as_str(), report.message);
    match report.code.status() {
        404 => ErrorData::resource_not_found(message, data),
        400..=499 => ErrorData::invalid_params(message, data),
        _ => ErrorData::internal_error(message, data),
    }
}

/// Logs a failed call's cause: 5xx answers are opaque to the client.
fn log_failure(tool: &str, request_id: &str, failed: &Failed) {
    let status = failed.error().code().status();
    if status >= 500 {
        tracing::warn!(request_id, tool, error = ?failed.error(), "MCP call failed");
    } else {
        tracing::info!(request_id, tool, code = %failed.error().code(), "MCP call refused");
    }
}

impl ServerHandler for Gateway {
    /// Answers with the client's protocol version when it is one the SDK speaks (a client
    /// of an older revision would otherwise be told one it does not know), else the latest.
    async fn initialize(
        &self,
        request: InitializeRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<InitializeResult, ErrorData> {
        let info = self.get_info();
        Ok(
            if ProtocolVersion::KNOWN_VERSIONS.contains(&request.protocol_version) {
                info.with_protocol_version(request.protocol_version)
            } else {
                info
            },
        )
    }

    fn get_info(&self) -> ServerInfo {
        ServerInfo::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_resources()
                .build(),
        )
        .with_server_info(
            Implementation::new("rustle-gateway", env!("CARGO_PKG_VERSION"))
                .with_title("RUSTLE Gateway"),
        )
        .with_instructions(format!(
            "Shared, versioned context for agents, stored by UCXL address. {ADDRESS_HELP}. \
             {PATTERN_HELP}. Each store adds a version; fetch reads the latest unless the \
             address names another."
        ))
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(tools()))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        TOOLS.iter().find(|t| t.name == name).cloned()
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let context = self.context(&context).await;
        self.call(request, context).await
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        Ok(ListResourceTemplatesResult::with_all_items(vec![
            RawResourceTemplate::new(ADDRESS_TEMPLATE, "ucxl-envelope")
                .with_title("A UCXL envelope")
                .with_description(format!(
                    "The content stored at a UCXL address (the latest version, or the one a \
                     temporal segment selects). {ADDRESS_HELP}"
                ))
                .no_annotation(),
        ]))
    }

    async fn list_resources(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        let ctx = self
            .context(&context)
            .await
            .map_err(|e| protocol_error(&e.into()))?;
        let params = SearchParams {
            pattern: EVERY_ADDRESS.to_owned(),
            limit: None,
            cursor: request.and_then(|r| r.cursor),
            content_type: None,
        };
        let page = search::run(&self.state, &ctx, params)
            .await
            .map_err(|f| {
                log_failure("resources/list", ctx.request_id(), &f);
                protocol_error(&f)
            })?
            .into_data();
        let resources = page
            .items
            .into_iter()
            .map(|item| {
                let address = item.address.canonical().to_owned();
                RawResource::new(address.clone(), address)
                    .with_mime_type(item.content_type)
                    .with_size(u32::try_from(item.size).unwrap_or(u32::MAX))
                    .no_annotation()
            })
            .collect();
        Ok(ListResourcesResult {
            meta: None,
            next_cursor: page.next_cursor,
            resources,
        })
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResult, ErrorData> {
        let ctx = self
            .context(&context)
            .await
            .map_err(|e| protocol_error(&e.into()))?;
        let fetched = async {
            let address = crate::auth::http::permit(
                &self.state,
                &ctx.caller,
                Some(&ctx.audit),
                Op::Read,
                &request.uri,
            )?;
            envelopes::fetch(&self.state, &ctx, &address).await
        }
        .await
        .map_err(|f: Failed| {
            log_failure("resources/read", ctx.request_id(), &f);
            protocol_error(&f)
        })?;
        let envelope = fetched.into_data();
        // Text content as itself; anything else as its JSON.
        let text = match envelope.content.value().as_deref() {
            Ok(Value::String(s)) if !envelope.content_type.contains("json") => s.clone(),
            _ => envelope.content.to_string(),
        };
        Ok(ReadResourceResult::new(vec![
            ResourceContents::text(text, request.uri).with_mime_type(envelope.content_type),
        ]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(tool: &str) -> Value {
        let tool = tools()
            .into_iter()
            .find(|t| t.name == tool)
            .expect("the tool");
        Value::Object((*tool.input_schema).clone())
    }

    fn required(schema: &Value) -> Vec<String> {
        schema["required"]
            .as_array()
            .map(|r| {
                r.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn every_tool_is_named_and_dispatched() {
        let names: Vec<String> = tools().iter().map(|t| t.name.to_string()).collect();
        assert_eq!(
            names,
            [
                "ucxl_store",
                "ucxl_fetch",
                "ucxl_history",
                "ucxl_search",
                "ucxl_delete"
            ]
        );
        assert!(names.iter().all(|n| is_tool(n)));
        assert!(!is_tool("ucxl_watch"));
    }

    #[test]
    fn schemas_come_from_the_argument_types_and_teach_the_grammar() {
        let store = schema("ucxl_store");
        assert_eq!(store["type"], "object");
        assert_eq!(required(&store), ["address", "content"]);
        for field in ["content_type", "metadata", "idempotency_key"] {
            assert!(store["properties"][field].is_object(), "{field}: {store}");
        }
        let address = store["properties"]["address"]["description"]
            .as_str()
            .expect("a description");
        assert!(
            address.contains("ucxl://claude:architect@bzzz:design/*^/decisions/transport.json")
        );
        assert!(address.contains("*~N"));
        assert_eq!(required(&schema("ucxl_fetch")), ["address"]);
        assert_eq!(required(&schema("ucxl_history")), ["address"]);
        assert_eq!(required(&schema("ucxl_delete")), ["address"]);
        let search = schema("ucxl_search");
        assert_eq!(required(&search), ["pattern"]);
        assert!(
            search["properties"]["pattern"]["description"]
                .as_str()
                .is_some_and(|d| d.contains("ucxl://any:any@bzzz:any/decisions/**"))
        );
        assert_eq!(search["properties"]["limit"]["maximum"], 1000, "{search}");
    }

    #[test]
    fn arguments_that_do_not_fit_are_invalid_payload_errors_naming_the_field() {
        let e = arguments::<AddressArgs>(None).expect_err("address is required");
        assert_eq!(e.code(), ucxl::Code::InvalidPayload);
        assert!(e.to_string().contains("address"), "{e}");
        let extra: Map<String, Value> =
            serde_json::from_value(json!({"address": "ucxl://a:r@p:t/x", "adress": 1}))
                .expect("object");
        let e = arguments::<AddressArgs>(Some(extra)).expect_err("unknown field");
        assert!(e.to_string().contains("adress"), "{e}");
        assert!(idempotency_key(Some(" padded ")).is_err());
        assert!(idempotency_key(Some("k-1")).is_ok_and(|k| k.is_some()));
    }

    #[test]
    fn domain_errors_become_tool_errors_with_the_rest_code_and_message() {
        let cases = [
            (
                ApiError::from(ucxl::Address::parse("ucxl://a!:r@p:t/x").expect_err("invalid")),
                "UCXL-400-INVALID_ADDRESS",
            ),
            (
                ApiError::not_found("nothing stored", json!({})),
                "UCXL-404-NOT_FOUND",
            ),
            (
                ApiError::Conflict {
                    message: "the key names a delete".into(),
                    details: json!({}),
                },
                "UCXL-409-CONFLICT",
            ),
            (
                ApiError::Unavailable {
                    message: "no node answered".into(),
                    details: json!({}),
                    retry_after: Some(1),
                },
                "UCXL-503-SERVICE_UNAVAILABLE",
            ),
            (
                ApiError::Forbidden {
                    operation: Op::Write,
                    target: "ucxl://a:r@p:t/x".into(),
                },
                "UCXL-403-FORBIDDEN",
            ),
        ];
        for (error, code) in cases {
            let report = error.report();
            let result = error_result(&report, "rid-1");
            assert_eq!(result.is_error, Some(true));
            let structured = result.structured_content.expect("structured");
            assert_eq!(structured["code"], code, "{structured}");
            assert_eq!(structured["message"], report.message);
            assert_eq!(structured["request_id"], "rid-1");
            assert_eq!(report.code.as_str(), code, "the REST code is the MCP code");
        }
        let invalid = ApiError::from(ucxl::Address::parse("ucxl://a!:r@p:t/x").expect_err("x"));
        let result = error_result(&invalid.report(), "r");
        assert_eq!(
            result.structured_content.expect("structured")["details"]["field"],
            "agent"
        );
    }

    #[test]
    fn internal_errors_stay_opaque() {
        let report = ApiError::internal(std::io::Error::other("secret path /var/x")).report();
        let result = error_result(&report, "r");
        let text = serde_json::to_string(&result).expect("json");
        assert!(!text.contains("secret path"), "{text}");
    }

    #[test]
    fn resource_errors_are_json_rpc_errors_with_the_ucxl_code() {
        let not_found = protocol_error(&ApiError::not_found("nothing", json!({})).into());
        assert_eq!(not_found.code, rmcp::model::ErrorCode::RESOURCE_NOT_FOUND);
        assert_eq!(not_found.data.expect("data")["code"], "UCXL-404-NOT_FOUND");
        let invalid = protocol_error(&ApiError::bad_request("bad", json!({})).into());
        assert_eq!(invalid.code, rmcp::model::ErrorCode::INVALID_PARAMS);
    }
}
