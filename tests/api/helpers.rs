//! `spawn_app()`: a gateway on a random port with its own state, and a client for it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use reqwest::{Method, RequestBuilder, Response};
use rustle_gateway::config::{Config, Sources};
use rustle_gateway::startup::{Application, Options};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// A running gateway.
pub struct TestApp {
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    /// The environment the app's reloads read; tests change it to exercise reloads.
    pub env: Arc<Mutex<HashMap<String, String>>>,
    shutdown: CancellationToken,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    /// The journal directory of apps whose configuration did not name one.
    _journal: Option<tempfile::TempDir>,
    /// The data directory of apps whose configuration did not name one.
    _data: Option<tempfile::TempDir>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The default test configuration: the defaults, on 127.0.0.1 port 0, without an audit
/// log (records would go to the test process's standard output; the audit tests name a
/// file), with the local store in memory (the durable store has its own tests).
pub fn test_config() -> Config {
    let mut config = Sources::default().resolve().expect("defaults are valid");
    config.listen_addr = "127.0.0.1:0".parse().expect("addr");
    config.audit_log = rustle_gateway::config::AuditSink::Off;
    config.local_store = rustle_gateway::config::LocalStorage::Memory;
    config
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(test_config(), Options::default()).await
}

pub async fn spawn_app_with(config: Config, options: Options) -> TestApp {
    spawn_app_with_env(config, options, HashMap::new()).await
}

/// A gateway whose environment (read at start and by every reload) holds `initial`.
pub async fn spawn_app_with_env(
    mut config: Config,
    mut options: Options,
    mut initial: HashMap<String, String>,
) -> TestApp {
    // Never the default directory: tests run in parallel, and each journal is one file.
    let journal = (config.journal_dir == test_config_default_journal()).then(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        config.journal_dir = dir.path().to_path_buf();
        dir
    });
    if let Some(dir) = &journal {
        // Reloads re-read the environment: they must find the same directory.
        initial.insert(
            "RUSTLE_JOURNAL_DIR".to_owned(),
            dir.path().display().to_string(),
        );
    }
    let data = (config.data_dir == test_config_default().data_dir).then(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        config.data_dir = dir.path().to_path_buf();
        dir
    });
    if let Some(dir) = &data {
        initial.insert(
            "RUSTLE_DATA_DIR".to_owned(),
            dir.path().display().to_string(),
        );
    }
    initial
        .entry("RUSTLE_LOCAL_STORE".to_owned())
        .or_insert_with(|| {
            match config.local_store {
                rustle_gateway::config::LocalStorage::Disk => "disk",
                rustle_gateway::config::LocalStorage::Memory => "memory",
            }
            .to_owned()
        });
    let env = Arc::new(Mutex::new(initial));
    let reader = Arc::clone(&env);
    options.env = Arc::new(move || reader.lock().expect("env lock").clone());
    let app = Application::build(config, options)
        .await
        .expect("app builds");
    let addr = app.local_addr();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    TestApp {
        addr,
        client: reqwest::Client::new(),
        env,
        shutdown,
        server: Some(server),
        _journal: journal,
        _data: data,
    }
}

fn test_config_default() -> Config {
    Sources::default().resolve().expect("defaults are valid")
}

fn test_config_default_journal() -> std::path::PathBuf {
    test_config_default().journal_dir
}

/// URL-encodes a query value.
pub fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.client.request(method, self.url(path))
    }

    pub fn envelope_url(&self, address: &str) -> String {
        self.url(&format!("/v1/envelopes?address={}", enc(address)))
    }

    pub async fn put(&self, address: &str, body: Value) -> Response {
        self.client
            .put(self.envelope_url(address))
            .json(&body)
            .send()
            .await
            .expect("request sent")
    }

    pub async fn put_keyed(&self, address: &str, key: &str, body: Value) -> Response {
        self.client
            .put(self.envelope_url(address))
            .header("Idempotency-Key", key)
            .json(&body)
            .send()
            .await
            .expect("request sent")
    }

    pub async fn get(&self, address: &str) -> Response {
        self.client
            .get(self.envelope_url(address))
            .send()
            .await
            .expect("request sent")
    }

    pub async fn delete(&self, address: &str) -> Response {
        self.client
            .delete(self.envelope_url(address))
            .send()
            .await
            .expect("request sent")
    }

    pub async fn get_path(&self, path: &str) -> Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request sent")
    }

    /// `POST /v1/admin/reload` with `token`: status and body.
    pub async fn reload(&self, token: &str) -> (u16, Value) {
        json(
            self.request(reqwest::Method::POST, "/v1/admin/reload")
                .bearer_auth(token)
                .send()
                .await
                .expect("sent"),
        )
        .await
    }

    /// Stops the server and waits for it to finish draining.
    pub async fn stop(mut self) -> std::io::Result<()> {
        self.shutdown.cancel();
        match self.server.take() {
            Some(handle) => handle.await.expect("server task joins"),
            None => Ok(()),
        }
    }
}

/// The JSON body of a response, with its status.
pub async fn json(response: Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let body = response.json::<Value>().await.expect("a JSON body");
    (status, body)
}

/// Asserts the UCXL error shape and returns the error object.
pub fn assert_error(status: u16, body: &Value, code: &str) -> Value {
    let error = body
        .get("error")
        .unwrap_or_else(|| panic!("not an error body: {body}"));
    assert_eq!(error["code"], code, "{body}");
    assert_eq!(
        code[5..8].parse::<u16>().expect("status in code"),
        status,
        "{body}"
    );
    for field in ["message", "source", "path", "request_id", "timestamp"] {
        assert!(error[field].is_string(), "missing {field}: {body}");
    }
    assert!(
        error["details"].is_object(),
        "details must be an object: {body}"
    );
    assert_eq!(error["source"], "rustle-gateway");
    error.clone()
}

/// Asserts the UCXL success shape and returns `data`.
pub fn assert_success(body: &Value, code: &str) -> Value {
    let response = body
        .get("response")
        .unwrap_or_else(|| panic!("not a success body: {body}"));
    assert_eq!(response["code"], code, "{body}");
    assert!(response["request_id"].is_string());
    assert!(response["timestamp"].is_string());
    response["data"].clone()
}

/// A fresh project name, so tests never share addresses.
pub fn project() -> String {
    format!("p{}", uuid::Uuid::now_v7().simple())
}
