//! Node processes for tests: each on free loopback ports, with its own data directory,
//! killed when dropped. A node started with `BZZZ_API_TOKEN` in its environment gets the
//! token on every request the harness sends it, as a configured gateway would.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use serde_json::Value;

/// The node binary: cargo's path for this package's tests; for the other packages of the
/// workspace (the gateway's tests include this file), the one next to the test binary in
/// the same target directory, built first when missing.
pub fn bin() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    if let Some(path) = option_env!("CARGO_BIN_EXE_bzzz-node") {
        return PathBuf::from(path);
    }
    BUILT
        .get_or_init(|| {
            let exe = std::env::current_exe().expect("the test binary's path");
            // target/<profile>/deps/<test> → target/<profile>/bzzz-node
            let profile_dir = exe
                .parent()
                .and_then(Path::parent)
                .expect("the test binary is in target/<profile>/deps");
            let bin = profile_dir.join(format!("bzzz-node{}", std::env::consts::EXE_SUFFIX));
            if !bin.exists() {
                let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
                let mut build = Command::new(cargo);
                build.args(["build", "-p", "bzzz-node", "--bin", "bzzz-node"]);
                if profile_dir.file_name().is_some_and(|n| n == "release") {
                    build.arg("--release");
                }
                let status = build.status().expect("cargo runs");
                assert!(status.success(), "building bzzz-node failed");
            }
            bin
        })
        .clone()
}

/// URL-encodes a query value.
pub fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Status and JSON body of a response.
pub async fn body(response: reqwest::Result<reqwest::Response>) -> (u16, Value) {
    let response = response.expect("the node answers");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Polls `check` every 50 ms until it holds or `within` has passed.
pub async fn wait_until<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A running node process.
pub struct NodeProc {
    pub name: String,
    pub http: String,
    pub p2p: String,
    pub peer_id: String,
    /// The fields of the node's "ready" log line.
    pub ready: Value,
    /// Every JSON line the node logged so far.
    logs: Arc<Mutex<Vec<Value>>>,
    dir: PathBuf,
    bootstrap: Vec<String>,
    extra: Vec<(String, String)>,
    child: Option<Child>,
    /// Owns the data directory of nodes started fresh.
    tmp_dir: Option<tempfile::TempDir>,
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.kill();
    }
}

impl NodeProc {
    /// Starts a node with a fresh data directory and free ports.
    pub async fn start(
        name: &str,
        bootstrap: &[String],
        ports: Option<(u16, u16)>,
        extra: &[(&str, &str)],
    ) -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_path_buf();
        let extra: Vec<(String, String)> = extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let mut node = Self::spawn(name, &dir, bootstrap, ports, &extra).await;
        node.tmp_dir = Some(tmp);
        node
    }

    async fn spawn(
        name: &str,
        dir: &Path,
        bootstrap: &[String],
        ports: Option<(u16, u16)>,
        extra: &[(String, String)],
    ) -> Self {
        let (http_port, p2p_port) = ports.unwrap_or((0, 0));
        let mut command = Command::new(bin());
        command
            .env_clear()
            .env("BZZZ_HTTP_ADDR", format!("127.0.0.1:{http_port}"))
            .env("BZZZ_P2P_ADDR", format!("/ip4/127.0.0.1/tcp/{p2p_port}"))
            .env("BZZZ_BOOTSTRAP_PEERS", bootstrap.join(","))
            .env("BZZZ_DATA_DIR", dir)
            .env("BZZZ_NODE_NAME", name)
            .env("BZZZ_LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in extra {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("the node starts");
        let stdout = child.stdout.take().expect("stdout");
        // The "ready" log line carries the bound addresses: that is the readiness signal.
        // The reader keeps draining the pipe afterwards, so the node never blocks on it.
        let (tx, rx) = mpsc::channel();
        let tag = name.to_owned();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let logged = Arc::clone(&logs);
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if std::env::var_os("BZZZ_TEST_LOGS").is_some() {
                    eprintln!("[{tag}] {line}");
                }
                let Ok(entry) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if entry["fields"]["message"] == "ready"
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(entry["fields"].clone());
                }
                logged.lock().expect("log lock").push(entry);
            }
        });
        let ready = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(30)))
            .await
            .expect("reader joins")
            .unwrap_or_else(|_| panic!("node {name} did not become ready"));
        let field = |k: &str| ready[k].as_str().unwrap_or_default().to_owned();
        Self {
            name: name.to_owned(),
            http: field("http"),
            p2p: field("p2p"),
            peer_id: field("peer_id"),
            ready,
            logs,
            dir: dir.to_path_buf(),
            bootstrap: bootstrap.to_vec(),
            extra: extra.to_vec(),
            child: Some(child),
            tmp_dir: None,
        }
    }

    /// The JSON lines the node logged so far (the reader may be a line or two behind the
    /// answers the node sent).
    pub fn logs(&self) -> Vec<Value> {
        self.logs.lock().expect("log lock").clone()
    }

    /// The node's access lines (`fields`) of requests with `request_id`, waiting up to 10 s
    /// for at least one.
    pub async fn access_lines(&self, request_id: &str) -> Vec<Value> {
        let of = |logs: Vec<Value>| -> Vec<Value> {
            logs.into_iter()
                .filter(|l| l["target"] == "access" && l["fields"]["request_id"] == request_id)
                .map(|l| l["fields"].clone())
                .collect()
        };
        wait_until(Duration::from_secs(10), || async {
            !of(self.logs()).is_empty()
        })
        .await;
        of(self.logs())
    }

    /// The ports this node bound.
    fn ports(&self) -> (u16, u16) {
        let http = self
            .http
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        let p2p = self
            .p2p
            .split('/')
            .skip_while(|s| *s != "tcp")
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        (http, p2p)
    }

    pub fn url(&self, path: &str) -> String {
        let tls = self.extra.iter().any(|(k, _)| k == "BZZZ_TLS_CERT");
        let scheme = if tls { "https" } else { "http" };
        format!("{scheme}://{}{}", self.http, path)
    }

    /// The node's API token (`BZZZ_API_TOKEN` of its environment), if any.
    pub fn token(&self) -> Option<&str> {
        self.extra
            .iter()
            .find(|(k, v)| k == "BZZZ_API_TOKEN" && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }

    /// A request to `path` of this node, with its token when it has one.
    pub fn request(
        &self,
        client: &reqwest::Client,
        method: reqwest::Method,
        path: &str,
    ) -> reqwest::RequestBuilder {
        let request = client.request(method, self.url(path));
        match self.token() {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// The p2p address as a DNS name (`/dns4/localhost/tcp/<port>`), without the peer id.
    pub fn p2p_dns(&self) -> String {
        format!("/dns4/localhost/tcp/{}", self.ports().1)
    }

    /// SIGKILL, as a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, waiting for a clean exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id().to_string();
            let _ = Command::new("kill").args(["-TERM", &pid]).status();
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            loop {
                match child.try_wait() {
                    Ok(Some(status)) => {
                        assert!(status.success(), "{} exited with {status}", self.name);
                        break;
                    }
                    Ok(None) if std::time::Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    _ => {
                        let _ = child.kill();
                        panic!("{} did not stop on SIGTERM", self.name);
                    }
                }
            }
        }
    }

    /// Starts the same node again: same data, ports and bootstrap list.
    pub async fn restart(&mut self) {
        self.kill();
        let tmp = self.tmp_dir.take();
        let fresh = Self::spawn(
            &self.name,
            &self.dir,
            &self.bootstrap,
            Some(self.ports()),
            &self.extra,
        )
        .await;
        let old = std::mem::replace(self, fresh);
        drop(old);
        self.tmp_dir = tmp;
    }

    pub async fn put(
        &self,
        client: &reqwest::Client,
        address: &str,
        envelope: Value,
    ) -> (u16, Value) {
        let path = format!("/ucxi/v1/put?address={}", enc(address));
        body(
            self.request(client, reqwest::Method::PUT, &path)
                .json(&envelope)
                .send()
                .await,
        )
        .await
    }

    pub async fn put_keyed(
        &self,
        client: &reqwest::Client,
        address: &str,
        key: &str,
        envelope: Value,
    ) -> (u16, Value) {
        let path = format!("/ucxi/v1/put?address={}", enc(address));
        body(
            self.request(client, reqwest::Method::PUT, &path)
                .header("Idempotency-Key", key)
                .json(&envelope)
                .send()
                .await,
        )
        .await
    }

    pub async fn get(&self, client: &reqwest::Client, address: &str) -> (u16, Value) {
        let path = format!("/ucxi/v1/get?address={}", enc(address));
        body(
            self.request(client, reqwest::Method::GET, &path)
                .send()
                .await,
        )
        .await
    }

    pub async fn delete(&self, client: &reqwest::Client, address: &str) -> (u16, Value) {
        let path = format!("/ucxi/v1/delete?address={}", enc(address));
        body(
            self.request(client, reqwest::Method::DELETE, &path)
                .send()
                .await,
        )
        .await
    }

    /// `data` of `/status`.
    pub async fn status(&self, client: &reqwest::Client) -> Value {
        body(
            self.request(client, reqwest::Method::GET, "/status")
                .send()
                .await,
        )
        .await
        .1["response"]["data"]
            .clone()
    }
}

/// A p2p address without its `/p2p/<id>` suffix.
pub fn bare(addr: &str) -> String {
    addr.split("/p2p/").next().unwrap_or(addr).to_owned()
}

/// Several nodes bootstrapping to each other.
pub struct Cluster {
    pub nodes: Vec<NodeProc>,
}

impl Cluster {
    /// Starts `n` nodes: the first alone, each later one bootstrapping to all earlier ones;
    /// returns once every node is connected to every other.
    pub async fn start(n: usize) -> Self {
        Self::start_with(n, &[]).await
    }

    /// The same with extra environment for every node.
    pub async fn start_with(n: usize, extra: &[(&str, &str)]) -> Self {
        let mut nodes: Vec<NodeProc> = Vec::new();
        for i in 0..n {
            // Bare addresses, as an operator writes them: the peer id comes from the
            // connection (SPEC §9).
            let bootstrap: Vec<String> = nodes.iter().map(|n| bare(&n.p2p)).collect();
            nodes.push(NodeProc::start(&format!("n{}", i + 1), &bootstrap, None, extra).await);
        }
        Self::from_nodes(nodes).await
    }

    /// A cluster of nodes started by the caller; returns once every node is connected to
    /// every other.
    pub async fn from_nodes(nodes: Vec<NodeProc>) -> Self {
        let cluster = Self { nodes };
        cluster.wait_for_mesh().await;
        cluster
    }

    async fn wait_for_mesh(&self) {
        let client = reqwest::Client::new();
        let want = self
            .nodes
            .iter()
            .filter(|n| n.child.is_some())
            .count()
            .saturating_sub(1);
        for node in self.nodes.iter().filter(|n| n.child.is_some()) {
            let meshed = wait_until(Duration::from_secs(20), || async {
                node.status(&client).await["connected_peers"].as_u64() == Some(want as u64)
            })
            .await;
            assert!(
                meshed,
                "{} connected to {want} peers: {}",
                node.name,
                node.status(&client).await
            );
        }
    }

    /// Restarts node `i` and waits until the running nodes are a full mesh again.
    pub async fn restart(&mut self, i: usize) {
        // A restarted node bootstraps to every node, itself included, as a compose file
        // that lists the whole cluster on every node does.
        let everyone: Vec<String> = self.nodes.iter().map(|n| bare(&n.p2p)).collect();
        self.nodes[i].bootstrap = everyone;
        self.nodes[i].restart().await;
        self.wait_for_mesh().await;
    }
}
