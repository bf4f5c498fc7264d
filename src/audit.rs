//! The audit log: one JSON line for every write, delete and admin call, and for every
//! request refused as unauthenticated (401), forbidden (403) or over its rate (429).
//!
//! A record says who (principal), what (operation, address, envelope id), how it ended
//! (status, UCXL code) and where it was served (`real`, `fallback`, `mock`); never content,
//! never credentials. The facts are filled in by whoever learns them as the request passes
//! (the authentication layer, the route's permission check, the backend call) into a
//! [`Slot`] the [`record`] layer reads once the answer is ready, before it is sent.
//!
//! Records of writes and deletes are appended before their answer leaves; a sink that
//! cannot take them turns those answers into 503s (and refuses new writes up front while it
//! stays broken; those refusals are recorded too, and the first one appended finds the sink
//! healed). One writer thread appends, several records per system call when requests
//! arrive together.

use std::io::{self, Write as _};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use ucxl::{Code, EnvelopeId};
use ucxl_service::{ErrorReport, RequestId};

use crate::auth::{Op, Principal};
use crate::backend::BackendKind;
use crate::config::AuditSink;
use crate::error::ApiError;
use crate::state::AppState;

/// Records waiting for the writer; past this, requests wait for room.
const QUEUE: usize = 4096;
/// Records written per system call at most.
const BATCH: usize = 256;
/// Longest wait for the writer before a record counts as not written.
const APPEND_TIMEOUT: Duration = Duration::from_secs(2);

/// What is known of a request, filled in as it passes.
#[derive(Debug, Default, Clone)]
struct Facts {
    principal: Option<Arc<Principal>>,
    operation: Option<Op>,
    address: Option<String>,
    envelope_id: Option<EnvelopeId>,
    backend: Option<BackendKind>,
    outcome: Option<Code>,
}

/// The facts of one request, shared by the layers and the handler it passes through.
#[derive(Debug, Default, Clone)]
pub struct Slot(Arc<Mutex<Facts>>);

impl Slot {
    fn facts(&self) -> std::sync::MutexGuard<'_, Facts> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Who is calling.
    pub fn principal(&self, principal: &Arc<Principal>) {
        self.facts().principal = Some(Arc::clone(principal));
    }

    /// What is attempted, on which address or pattern (as the caller sent it).
    pub fn operation(&self, op: Op, address: &str) {
        let mut facts = self.facts();
        facts.operation = Some(op);
        facts.address = Some(ucxl::error::excerpt(address));
    }

    /// The envelope (or delete) id of a write.
    pub fn envelope(&self, id: &EnvelopeId) {
        self.facts().envelope_id = Some(id.clone());
    }

    /// Which backend served (or failed).
    pub fn backend(&self, backend: BackendKind) {
        self.facts().backend = Some(backend);
    }

    /// The answer's UCXL code where the HTTP status does not carry it: an MCP tool
    /// result is HTTP 200 whether the write was done or refused.
    pub fn outcome(&self, code: Code) {
        self.facts().outcome = Some(code);
    }
}

/// One line of the audit log.
#[derive(Debug, Serialize)]
struct Line<'a> {
    audit: bool,
    time: String,
    request_id: Option<&'a str>,
    principal: &'a str,
    operation: Option<Op>,
    method: &'a str,
    route: &'a str,
    address: Option<&'a str>,
    envelope_id: Option<&'a str>,
    status: u16,
    outcome: String,
    backend: Option<&'static str>,
}

enum Job {
    Append(Vec<u8>, oneshot::Sender<io::Result<()>>),
    Reopen(AuditSink, oneshot::Sender<io::Result<()>>),
}

/// The audit log's writer.
#[derive(Debug)]
pub struct Audit {
    jobs: Option<mpsc::Sender<Job>>,
    healthy: Arc<AtomicBool>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Append(..) => "Append",
            Self::Reopen(..) => "Reopen",
        })
    }
}

/// Where the writer thread writes.
enum Out {
    Stdout,
    File {
        path: PathBuf,
        file: Option<std::fs::File>,
    },
    Off,
}

impl Out {
    fn open(sink: &AuditSink) -> io::Result<Self> {
        Ok(match sink {
            AuditSink::Stdout => Self::Stdout,
            AuditSink::Off => Self::Off,
            AuditSink::File(path) => Self::File {
                file: Some(open_append(path)?),
                path: path.clone(),
            },
        })
    }

    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Self::Off => Ok(()),
            Self::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(bytes)?;
                out.flush()
            }
            Self::File { path, file } => {
                // A file that failed is opened again for the next batch (a full disk that
                // was cleaned, a rotated file): the sink heals without a restart.
                let f = match file {
                    Some(f) => f,
                    None => file.insert(open_append(path)?),
                };
                let written = f.write_all(bytes).and_then(|()| f.flush());
                if written.is_err() {
                    *file = None;
                }
                written
            }
        }
    }
}

fn open_append(path: &PathBuf) -> io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

impl Audit {
    /// The audit log writing to `sink`, with its writer thread.
    ///
    /// # Errors
    /// When the file cannot be opened.
    pub fn open(sink: &AuditSink) -> io::Result<Self> {
        if *sink == AuditSink::Off {
            return Ok(Self {
                jobs: None,
                healthy: Arc::new(AtomicBool::new(true)),
            });
        }
        let out = Out::open(sink)?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let healthy = Arc::new(AtomicBool::new(true));
        let flag = Arc::clone(&healthy);
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || write_loop(rx, out, &flag))?;
        Ok(Self {
            jobs: Some(tx),
            healthy,
        })
    }

    /// False once appending failed, until an append succeeds again.
    #[must_use]
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    async fn send(
        &self,
        job: impl FnOnce(oneshot::Sender<io::Result<()>>) -> Job,
    ) -> io::Result<()> {
        let Some(jobs) = &self.jobs else {
            return Ok(());
        };
        let (done, result) = oneshot::channel();
        let work = async {
            jobs.send(job(done))
                .await
                .map_err(|_| io::Error::other("the audit writer stopped"))?;
            result
                .await
                .map_err(|_| io::Error::other("the audit writer stopped"))?
        };
        tokio::time::timeout(APPEND_TIMEOUT, work)
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the audit log did not take the record in time",
                )
            })?
    }

    /// Appends one record (a JSON line).
    ///
    /// # Errors
    /// When the sink could not take it.
    pub async fn append(&self, line: Vec<u8>) -> io::Result<()> {
        self.send(|done| Job::Append(line, done)).await
    }

    /// Opens `sink` (again: a rotated file is reopened by name) for the next records.
    ///
    /// # Errors
    /// When it cannot be opened; the writer then retries on the next record.
    pub async fn reopen(&self, sink: AuditSink) -> io::Result<()> {
        self.send(|done| Job::Reopen(sink, done)).await
    }
}

fn write_loop(mut jobs: mpsc::Receiver<Job>, mut out: Out, healthy: &AtomicBool) {
    while let Some(first) = jobs.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        // Appends between reopens go out in one write.
        let mut bytes = Vec::new();
        let mut waiting = Vec::new();
        for job in batch {
            match job {
                Job::Append(line, done) => {
                    bytes.extend_from_slice(&line);
                    waiting.push(done);
                }
                Job::Reopen(sink, done) => {
                    flush(&mut out, &mut bytes, &mut waiting, healthy);
                    let result = Out::open(&sink).map(|o| out = o);
                    if let Err(e) = &result {
                        tracing::error!(error = %e, "cannot reopen the audit log; keeping the current one");
                    }
                    let _ = done.send(result);
                }
            }
        }
        flush(&mut out, &mut bytes, &mut waiting, healthy);
    }
}

fn flush(
    out: &mut Out,
    bytes: &mut Vec<u8>,
    waiting: &mut Vec<oneshot::Sender<io::Result<()>>>,
    healthy: &AtomicBool,
) {
    if waiting.is_empty() {
        return;
    }
    let result = out.write(bytes);
    if let Err(e) = &result {
        tracing::error!(error = %e, "the audit log cannot be written");
    }
    healthy.store(result.is_ok(), Ordering::Release);
    for done in waiting.drain(..) {
        let _ = done.send(
            result
                .as_ref()
                .copied()
                .map_err(|e| io::Error::new(e.kind(), e.to_string())),
        );
    }
    bytes.clear();
}

/// True for the operations whose record must be written before their answer is sent.
fn must_record(op: Option<Op>) -> bool {
    matches!(op, Some(Op::Write | Op::Delete))
}

/// The answer to a write or delete the audit log cannot take a record of.
fn refusal() -> ApiError {
    ApiError::Unavailable {
        message: "the audit log cannot take records: writes and deletes are refused until it can"
            .into(),
        details: json!({}),
        retry_after: Some(1),
    }
}

fn unavailable() -> Response {
    metrics::counter!("rustle_audit_failures_total").increment(1);
    refusal().into_response()
}

/// Refuses a write or delete before it happens while the sink is known to be broken,
/// rather than answering 503 for a write that was made. The refusal is itself recorded
/// (who, what, where), and that record is what finds the sink healed: once it is
/// appended, writes go through again.
///
/// # Errors
/// 503 while the last append failed.
pub fn writable(state: &AppState, op: Op) -> Result<(), ApiError> {
    if must_record(Some(op)) && !state.audit.healthy() {
        return Err(refusal());
    }
    Ok(())
}

/// The layer: gives the request its [`Slot`], and appends a record when the answer is one
/// the audit log keeps.
pub async fn record(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let slot = Slot::default();
    request.extensions_mut().insert(slot.clone());
    let method = request.method().clone();
    let route = request.extensions().get::<MatchedPath>().map_or_else(
        || request.uri().path().to_owned(),
        |m| m.as_str().to_owned(),
    );
    let request_id = request.extensions().get::<RequestId>().map(|r| r.0.clone());
    let route_op = Op::of_route(&method, &route);
    let response = next.run(request).await;
    // Nothing reads the facts once the answer is back: take them rather than copy them.
    let facts = std::mem::take(&mut *slot.facts());
    let operation = facts.operation.or(route_op);
    let status = response.status().as_u16();
    let answered = facts.outcome.map_or(status, Code::status);
    if !(matches!(operation, Some(Op::Write | Op::Delete | Op::Admin))
        || matches!(answered, 401 | 403 | 429))
    {
        return response;
    }
    let outcome = match (facts.outcome, response.extensions().get::<ErrorReport>()) {
        (Some(code), _) => code.to_string(),
        (None, Some(report)) => report.code.to_string(),
        (None, None) => Code::for_status(status).to_string(),
    };
    let line = Line {
        audit: true,
        time: ucxl::envelope::rfc3339::format(chrono::Utc::now()),
        request_id: request_id.as_deref(),
        principal: facts
            .principal
            .as_ref()
            .map_or(crate::auth::grant::ANONYMOUS, |p| p.name().as_str()),
        operation,
        method: method.as_str(),
        route: &route,
        address: facts.address.as_deref(),
        envelope_id: facts.envelope_id.as_ref().map(EnvelopeId::as_str),
        status,
        outcome,
        backend: facts.backend.map(BackendKind::as_str),
    };
    let mut bytes = match serde_json::to_vec(&line) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "cannot encode an audit record");
            return if must_record(operation) {
                unavailable()
            } else {
                response
            };
        }
    };
    bytes.push(b'\n');
    match state.audit.append(bytes).await {
        Ok(()) => response,
        Err(e) if must_record(operation) => {
            tracing::error!(error = %e, status, "a write's audit record was not written: answering 503");
            unavailable()
        }
        Err(e) => {
            metrics::counter!("rustle_audit_failures_total").increment(1);
            tracing::error!(error = %e, status, "an audit record was not written");
            response
        }
    }
}
