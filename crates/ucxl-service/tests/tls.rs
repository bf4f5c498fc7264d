//! HTTPS serving over real sockets: HTTP/1.1 and HTTP/2 by ALPN, refused handshakes,
//! certificate reloads, client certificates and graceful shutdown.
//!
//! Every server listens on port 0 and its socket is bound before the server task starts,
//! so clients connect at once. Time limits here only bound failures.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;
use ucxl_service::serve::{Limits, Listener, serve};
use ucxl_service::tls::{ServerTls, TlsError, TlsFiles};

/// How long a step that should succeed may take before the test fails.
const BOUND: Duration = Duration::from_secs(10);

// ---- test PKI ----

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A certificate with its key, in PEM, and the certificate's DER to compare with what a
/// server presents.
struct Issued {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        Self { cert, key }
    }

    fn pem(&self) -> String {
        self.cert.pem()
    }

    fn server(&self) -> Issued {
        self.issue(
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    fn client(&self) -> Issued {
        self.issue(&["client"], ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn issue(&self, names: &[&str], usage: ExtendedKeyUsagePurpose) -> Issued {
        let names: Vec<String> = names.iter().map(|&n| n.to_owned()).collect();
        let mut params = CertificateParams::new(names).expect("names");
        params.distinguished_name.push(DnType::CommonName, "test");
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().expect("key");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("certificate");
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }
}

/// Writes `server` (and the client CA, if any) into `dir`; returns the file set.
fn write_files(dir: &Path, server: &Issued, client_ca: Option<&Ca>) -> TlsFiles {
    let files = TlsFiles {
        cert: dir.join("server.crt"),
        key: dir.join("server.key"),
        client_ca: client_ca.map(|_| dir.join("client-ca.pem")),
    };
    std::fs::write(&files.cert, &server.cert_pem).expect("cert written");
    std::fs::write(&files.key, &server.key_pem).expect("key written");
    if let (Some(path), Some(ca)) = (&files.client_ca, client_ca) {
        std::fs::write(path, ca.pem()).expect("client CA written");
    }
    files
}

// ---- server ----

struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<io::Result<()>>,
}

impl Server {
    async fn start(tls: ServerTls, limits: Limits, app: Router) -> Self {
        let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bound");
        let addr = tcp.local_addr().expect("address");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(Listener::tls(tcp, tls), app, limits, async {
            let _ = stopped.await;
        }));
        Self {
            addr,
            stop: Some(stop),
            task,
        }
    }

    async fn started(files: &TlsFiles) -> Self {
        let tls = ServerTls::load(files).expect("TLS loaded");
        Self::start(tls, Limits::default(), hello()).await
    }

    fn url(&self) -> String {
        format!("https://localhost:{}/", self.addr.port())
    }

    /// Starts the graceful shutdown; `stopped` then waits for it.
    fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    async fn stopped(self) {
        within(self.task, "server stops")
            .await
            .expect("server task")
            .expect("served");
    }
}

fn hello() -> Router {
    Router::new().route("/", get(|| async { "hello" }))
}

async fn within<F: Future>(future: F, what: &str) -> F::Output {
    tokio::time::timeout(BOUND, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {BOUND:?}"))
}

// ---- clients ----

/// A reqwest client that trusts `ca` only and resolves `localhost` to the test server.
fn client(ca: &Ca, addr: SocketAddr) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(
            reqwest::Certificate::from_pem(ca.pem().as_bytes()).expect("CA certificate"),
        )
        .resolve("localhost", addr)
        .use_rustls_tls()
}

async fn get_ok(client: &reqwest::Client, url: &str) -> reqwest::Version {
    let response = within(client.get(url).send(), "request")
        .await
        .expect("answered");
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    let version = response.version();
    assert_eq!(response.text().await.expect("body"), "hello");
    version
}

/// rustls client settings trusting `ca`, offering `alpn`.
fn rustls_client(ca: &Ca, alpn: &[&[u8]]) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert.der().clone()).expect("CA added");
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

/// A TLS connection to `addr`, with fresh client settings so that no session is resumed.
async fn tls_connect(
    addr: SocketAddr,
    ca: &Ca,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(rustls_client(ca, alpn)));
    let tcp = TcpStream::connect(addr).await.expect("connected");
    let name = ServerName::try_from("localhost").expect("server name");
    within(connector.connect(name, tcp), "handshake")
        .await
        .expect("handshake")
}

/// The certificate the server presents to a new connection.
async fn presented(addr: SocketAddr, ca: &Ca) -> CertificateDer<'static> {
    let stream = tls_connect(addr, ca, &[b"http/1.1"]).await;
    let chain = stream
        .get_ref()
        .1
        .peer_certificates()
        .expect("server certificates");
    chain
        .first()
        .expect("leaf certificate")
        .clone()
        .into_owned()
}

/// Reads until the server closes the connection.
async fn read_to_close(stream: &mut (impl AsyncReadExt + Unpin)) -> io::Result<Vec<u8>> {
    let mut received = Vec::new();
    within(stream.read_to_end(&mut received), "connection closed")
        .await
        .map(|_| received)
}

// ---- tests ----

#[tokio::test]
async fn https_http1_is_served() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = Ca::new("test CA");
    let server = Server::started(&write_files(dir.path(), &ca.server(), None)).await;
    let client = client(&ca, server.addr)
        .http1_only()
        .build()
        .expect("client");
    assert_eq!(
        get_ok(&client, &server.url()).await,
        reqwest::Version::HTTP_11
    );
}

#[tokio::test]
async fn https_http2_is_negotiated_by_alpn() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = Ca::new("test CA");
    let server = Server::started(&write_files(dir.path(), &ca.server(), None)).await;
    let client = client(&ca, server.addr).build().expect("client");
    assert_eq!(
        get_ok(&client, &server.url()).await,
        reqwest::Version::HTTP_2
    );
}

#[tokio::test]
async fn without_alpn_http1_is_served() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = Ca::new("test CA");
    let server = Server::started(&write_files(dir.path(), &ca.server(), None)).await;
    let mut stream = tls_connect(server.addr, &ca, &[]).await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), None);
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("request sent");
    let answer = read_to_close(&mut stream).await.expect("answer");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.ends_with("hello"), "{answer}");
}

#[tokio::test]
async fn client_not_trusting_the_ca_fails_the_handshake() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = Ca::new("test CA");
    let server = Server::started(&write_files(dir.path(), &ca.server(), None)).await;
    let stranger = client(&Ca::new("another CA"), server.addr)
        .build()
        .expect("client");
    let e = within(stranger.get(server.url()).send(), "request")
        .await
        .expect_err("untrusted certificate refused");
    assert!(e.is_connect(), "{e:?}");
    // The failed handshake cost that connection only.
    let trusting = client(&ca, server.addr).build().expect("client");
    get_ok(&trusting, &server.url()).await;
}

#[tokio::test]
async fn plain_http_on_the_tls_port_gets_no_http_answer() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = Ca::new("test CA");
    let server = Server::started(&write_files(dir.path(), &ca.server(), None)).await;
    let mut plain = TcpStream::connect(server.addr).await.expect("connected");
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("request sent");
    // At most a TLS alert, then the close (or a reset, if the request was still unread).
    if let Ok(answer) = read_to_close(&mut plain).await {
        assert!(!answer.starts_with(b"HTTP/"), "{answer:?}");
    }
    let trusting = client(&ca, server.addr).build().expect("client");
    get_ok(&trusting, &server.url()).await;
}

#[tokio::test]
async fn silent_connection_does_not_hold_up_others() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = Ca::new("test CA");
    let server = Server::started(&write_files(dir.path(), &ca.server(), None)).await;
    // Never sends a ClientHello: a handshake run by the accept loop would wait on it.
    let _silent = TcpStream::connect(server.addr).await.expect("connected");
    let client = client(&ca, server.addr).build().expect("client");
    get_ok(&client, &server.url()).await;
}

#[tokio::test]
async fn handshake_is_bounded_by_the_header_read_timeout() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = Ca::new("test CA");
    let tls = ServerTls::load(&write_files(dir.path(), &ca.server(), None)).expect("loaded");
    let limits = Limits {
        header_read_timeout: Duration::from_millis(200),
    };
    let server = Server::start(tls, limits, hello()).await;
    let mut silent = TcpStream::connect(server.addr).await.expect("connected");
    let received = read_to_close(&mut silent).await.expect("closed");
    assert!(received.is_empty(), "{received:?}");
}

#[tokio::test]
async fn http1_over_tls_has_the_header_read_timeout() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = Ca::new("test CA");
    let tls = ServerTls::load(&write_files(dir.path(), &ca.server(), None)).expect("loaded");
    let limits = Limits {
        header_read_timeout: Duration::from_millis(200),
    };
    let server = Server::start(tls, limits, hello()).await;
    let mut stream = tls_connect(server.addr, &ca, &[b"http/1.1"]).await;
    // Half a request head, never finished (slowloris).
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: local")
        .await
        .expect("partial head sent");
    let answer = read_to_close(&mut stream).await.unwrap_or_default();
    // hyper closes at the timeout, answering 408 or nothing.
    assert!(
        answer.is_empty() || answer.starts_with(b"HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
}

#[tokio::test]
async fn without_alpn_a_silent_connection_is_closed_at_the_header_read_timeout() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = Ca::new("test CA");
    let tls = ServerTls::load(&write_files(dir.path(), &ca.server(), None)).expect("loaded");
    let limits = Limits {
        header_read_timeout: Duration::from_millis(200),
    };
    let server = Server::start(tls, limits, hello()).await;
    let mut stream = tls_connect(server.addr, &ca, &[]).await;
    // Closed, cleanly or not: `within` fails the test if it stays open.
    let answer = read_to_close(&mut stream).await.unwrap_or_default();
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
}

/// The client's HTTP/2 connection preface: the magic string and an empty SETTINGS frame.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";

#[tokio::test]
async fn http2_connection_without_a_request_is_closed_at_the_header_read_timeout() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = Ca::new("test CA");
    let tls = ServerTls::load(&write_files(dir.path(), &ca.server(), None)).expect("loaded");
    let limits = Limits {
        header_read_timeout: Duration::from_millis(200),
    };
    let server = Server::start(tls, limits, hello()).await;
    for preface in [&b""[..], H2_PREFACE] {
        let mut stream = tls_connect(server.addr, &ca, &[b"h2"]).await;
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        stream.write_all(preface).await.expect("preface sent");
        // The server's SETTINGS may come first; then the close, within `BOUND`.
        let _ = read_to_close(&mut stream).await;
    }
}

#[tokio::test]
async fn http2_connection_with_a_request_outlives_the_header_read_timeout() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = Ca::new("test CA");
    let tls = ServerTls::load(&write_files(dir.path(), &ca.server(), None)).expect("loaded");
    let limits = Limits {
        header_read_timeout: Duration::from_millis(100),
    };
    // The answer takes longer than the header read timeout.
    let slow = Router::new().route(
        "/",
        get(|| async {
            tokio::time::sleep(Duration::from_millis(400)).await;
            "hello"
        }),
    );
    let server = Server::start(tls, limits, slow).await;
    let client = client(&ca, server.addr).build().expect("client");
    assert_eq!(
        get_ok(&client, &server.url()).await,
        reqwest::Version::HTTP_2
    );
}

#[tokio::test]
async fn reload_serves_the_new_certificate_to_new_connections() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = Ca::new("test CA");
    let first = ca.server();
    let files = write_files(dir.path(), &first, None);
    let tls = ServerTls::load(&files).expect("loaded");
    let server = Server::start(tls.clone(), Limits::default(), hello()).await;
    assert_eq!(presented(server.addr, &ca).await, first.der);
    let open = tls_connect(server.addr, &ca, &[b"http/1.1"]).await;

    let second = ca.server();
    write_files(dir.path(), &second, None);
    // Files replaced, not yet reloaded: still the first.
    assert_eq!(presented(server.addr, &ca).await, first.der);
    tls.reload().expect("reloaded");
    assert_eq!(presented(server.addr, &ca).await, second.der);
    // A connection opened before the reload keeps its certificate.
    let chain = open.get_ref().1.peer_certificates().expect("certificates");
    assert_eq!(chain.first(), Some(&first.der));
    let client = client(&ca, server.addr).build().expect("client");
    get_ok(&client, &server.url()).await;
}

#[tokio::test]
async fn failed_reload_keeps_serving_the_old_certificate() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = Ca::new("test CA");
    let first = ca.server();
    let files = write_files(dir.path(), &first, None);
    let tls = ServerTls::load(&files).expect("loaded");
    let server = Server::start(tls.clone(), Limits::default(), hello()).await;

    std::fs::write(&files.key, "-----BEGIN PRIVATE KEY-----\ntruncated").expect("key broken");
    let e = tls.reload().expect_err("broken key refused");
    assert!(matches!(e, TlsError::InvalidPem { .. }), "{e:?}");
    assert_eq!(presented(server.addr, &ca).await, first.der);

    // A new certificate with the old key: refused as well.
    let second = ca.server();
    std::fs::write(&files.cert, &second.cert_pem).expect("cert written");
    std::fs::write(&files.key, &first.key_pem).expect("key written");
    let e = tls.reload().expect_err("mismatched key refused");
    assert!(matches!(e, TlsError::KeyMismatch { .. }), "{e:?}");
    assert_eq!(presented(server.addr, &ca).await, first.der);

    let client = client(&ca, server.addr).build().expect("client");
    get_ok(&client, &server.url()).await;
}

#[tokio::test]
async fn mtls_refuses_a_client_without_a_certificate() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = Ca::new("test CA");
    let clients = Ca::new("client CA");
    let server = Server::started(&write_files(dir.path(), &ca.server(), Some(&clients))).await;
    let anonymous = client(&ca, server.addr).build().expect("client");
    within(anonymous.get(server.url()).send(), "request")
        .await
        .expect_err("no client certificate refused");
}

#[tokio::test]
async fn mtls_refuses_a_client_certificate_from_another_ca() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = Ca::new("test CA");
    let clients = Ca::new("client CA");
    let server = Server::started(&write_files(dir.path(), &ca.server(), Some(&clients))).await;
    let foreign = Ca::new("foreign client CA").client();
    let identity =
        reqwest::Identity::from_pem(format!("{}{}", foreign.cert_pem, foreign.key_pem).as_bytes())
            .expect("identity");
    let stranger = client(&ca, server.addr)
        .identity(identity)
        .build()
        .expect("client");
    within(stranger.get(server.url()).send(), "request")
        .await
        .expect_err("foreign client certificate refused");
}

#[tokio::test]
async fn mtls_serves_a_client_certificate_signed_by_the_ca() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = Ca::new("test CA");
    let clients = Ca::new("client CA");
    let server = Server::started(&write_files(dir.path(), &ca.server(), Some(&clients))).await;
    let issued = clients.client();
    let identity =
        reqwest::Identity::from_pem(format!("{}{}", issued.cert_pem, issued.key_pem).as_bytes())
            .expect("identity");
    let known = client(&ca, server.addr)
        .identity(identity)
        .build()
        .expect("client");
    get_ok(&known, &server.url()).await;
}

/// A request in flight when shutdown starts is answered, then the server stops.
async fn shutdown_finishes_request_in_flight(http1_only: bool, version: reqwest::Version) {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = Ca::new("test CA");
    let tls = ServerTls::load(&write_files(dir.path(), &ca.server(), None)).expect("loaded");
    let entered = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    let app = Router::new().route(
        "/",
        get({
            let (entered, release) = (entered.clone(), release.clone());
            || async move {
                entered.notify_one();
                release.notified().await;
                "hello"
            }
        }),
    );
    let mut server = Server::start(tls, Limits::default(), app).await;
    let mut builder = client(&ca, server.addr);
    if http1_only {
        builder = builder.http1_only();
    }
    let client = builder.build().expect("client");
    let url = server.url();
    let request = tokio::spawn(async move { get_ok(&client, &url).await });
    within(entered.notified(), "request reaches the handler").await;
    server.begin_shutdown();
    release.notify_one();
    assert_eq!(
        within(request, "answer").await.expect("request task"),
        version
    );
    server.stopped().await;
}

#[tokio::test]
async fn shutdown_finishes_http1_requests_in_flight() {
    shutdown_finishes_request_in_flight(true, reqwest::Version::HTTP_11).await;
}

#[tokio::test]
async fn shutdown_finishes_http2_requests_in_flight() {
    shutdown_finishes_request_in_flight(false, reqwest::Version::HTTP_2).await;
}

#[tokio::test]
async fn shutdown_does_not_wait_for_pending_handshakes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = Ca::new("test CA");
    // The default header read timeout (60 s) would outlast the test's bound.
    let mut server = Server::started(&write_files(dir.path(), &ca.server(), None)).await;
    let _silent = TcpStream::connect(server.addr).await.expect("connected");
    // Accepted in order: once this is answered, the silent connection has its task.
    let client = client(&ca, server.addr).build().expect("client");
    get_ok(&client, &server.url()).await;
    server.begin_shutdown();
    server.stopped().await;
}
