//! The service the gateway serves: its router, with CORS ([`crate::cors`]) and compression
//! ([`crate::compression`]) around it for the requests that ask for them.
//!
//! Outside the request frame, so both see the answers it completes (UCXL error bodies). A
//! request with an `Origin` header goes through tower-http's `CorsLayer` when CORS is
//! configured; one with `Accept-Encoding` through its `CompressionLayer` when compression
//! is on; any other straight to the router, its answer given only the `Vary` values those
//! layers would have added (`Origin` for a list of origins; `Accept-Encoding` when the
//! answer is worth compressing), so that caches keep the variants apart.
//!
//! Hand-written rather than `Router::layer` with the two layers: axum wraps every route in
//! a router layer, so each request clones and boxes one more service and future per layer,
//! and the layers do their work whether the request asks for it or not. Measured with
//! callgrind on a mock-mode read at c=1 (release build, one worker), instructions per
//! request for a client that sends neither header: 58.0k without the layers, 64.1k with
//! the compression layer on the router, 70.8k with the CORS layer too; here 58.5k with
//! compression on, 58.8k with CORS configured too. A request that asks pays for
//! tower-http's work: 65.5k for a read sending `Accept-Encoding` (an answer too small to
//! compress; parsing the header is 3.6k of it), 65.8k for one sending an allowed `Origin`.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::http::{HeaderValue, Request, header};
use axum::response::Response;
use tower::{Layer, Service};
use tower_http::compression::CompressionLayer;
use tower_http::compression::predicate::Predicate;
use tower_http::cors::CorsLayer;

use crate::compression::{self, Worth};
use crate::config::{Config, CorsOrigins};

/// The router with CORS and compression where configured.
#[derive(Clone)]
pub struct Edge {
    router: Router,
    layers: Arc<Layers>,
}

impl std::fmt::Debug for Edge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Edge")
            .field("cors", &self.layers.cors.is_some())
            .field("compression", &self.layers.compression.is_some())
            .finish_non_exhaustive()
    }
}

struct Layers {
    cors: Option<CorsLayer>,
    /// Answers vary by `Origin`: CORS allows a list of origins (with `*` they do not).
    vary_origin: bool,
    compression: Option<(CompressionLayer<Worth>, Worth)>,
}

impl Edge {
    /// `router` with the CORS and compression `config` asks for.
    #[must_use]
    pub fn new(router: Router, config: &Config) -> Self {
        let min_bytes = config.http.compression_min_bytes;
        Self {
            router,
            layers: Arc::new(Layers {
                cors: crate::cors::layer(config),
                vary_origin: matches!(config.http.cors_allowed_origins, CorsOrigins::List(_)),
                compression: compression::layer(min_bytes)
                    .map(|layer| (layer, compression::worth(min_bytes))),
            }),
        }
    }
}

impl<B> Service<Request<B>> for Edge
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = EdgeFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The router is always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let headers = request.headers();
        let cors = self
            .layers
            .cors
            .as_ref()
            .filter(|_| headers.contains_key(header::ORIGIN));
        let compression = self
            .layers
            .compression
            .as_ref()
            .filter(|_| headers.contains_key(header::ACCEPT_ENCODING))
            .map(|(layer, _)| layer);
        // tower-http's services, built for this request (cheap clones of their settings).
        match (cors, compression) {
            (None, None) => EdgeFuture::Direct {
                answer: self.router.call(request),
                vary_origin: self.layers.vary_origin,
                worth: self
                    .layers
                    .compression
                    .as_ref()
                    .map(|(_, worth)| worth.clone()),
            },
            (None, Some(compression)) => EdgeFuture::Compressed(
                compression
                    .layer(self.router.clone())
                    .call(compression::allow_identity(request)),
            ),
            (Some(cors), None) => EdgeFuture::Cors(cors.layer(self.router.clone()).call(request)),
            (Some(cors), Some(compression)) => EdgeFuture::CorsCompressed(
                cors.layer(compression.layer(self.router.clone()))
                    .call(compression::allow_identity(request)),
            ),
        }
    }
}

type RouteFuture = axum::routing::future::RouteFuture<Infallible>;
type Compressed<F> = tower_http::compression::ResponseFuture<F, Worth>;

/// The answer of an [`Edge`].
// Direct is the common case: boxing the router's future would cost it an allocation.
#[allow(clippy::large_enum_variant)]
pub enum EdgeFuture {
    /// Straight from the router; `Vary` added on the way out.
    Direct {
        answer: RouteFuture,
        vary_origin: bool,
        worth: Option<Worth>,
    },
    /// Through the compression layer.
    Compressed(Compressed<RouteFuture>),
    /// Through the CORS layer.
    Cors(tower_http::cors::ResponseFuture<RouteFuture>),
    /// Through both.
    CorsCompressed(tower_http::cors::ResponseFuture<Compressed<RouteFuture>>),
}

impl std::fmt::Debug for EdgeFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Direct { .. } => "EdgeFuture::Direct",
            Self::Compressed(_) => "EdgeFuture::Compressed",
            Self::Cors(_) => "EdgeFuture::Cors",
            Self::CorsCompressed(_) => "EdgeFuture::CorsCompressed",
        })
    }
}

impl Future for EdgeFuture {
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let response = match self.get_mut() {
            Self::Compressed(answer) => ready!(Pin::new(answer).poll(cx))?.map(Body::new),
            Self::Cors(answer) => ready!(Pin::new(answer).poll(cx))?,
            Self::CorsCompressed(answer) => ready!(Pin::new(answer).poll(cx))?.map(Body::new),
            Self::Direct {
                answer,
                vary_origin,
                worth,
            } => {
                let mut response = ready!(Pin::new(answer).poll(cx))?;
                if *vary_origin {
                    response
                        .headers_mut()
                        .append(header::VARY, HeaderValue::from_static("origin"));
                }
                if worth
                    .as_ref()
                    .is_some_and(|worth| worth.should_compress(&response))
                {
                    response
                        .headers_mut()
                        .append(header::VARY, HeaderValue::from_static("accept-encoding"));
                }
                response
            }
        };
        Poll::Ready(Ok(response))
    }
}
