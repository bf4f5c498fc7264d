//! The binary as an operator runs it: exit 64 on bad configuration, serve, stop on SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_rustle-gateway");

fn gateway() -> Command {
    let mut c = Command::new(BIN);
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

#[test]
fn invalid_configuration_exits_64_with_every_problem() {
    let output = gateway()
        .env("RUSTLE_BZZZ_ENDPOINTS", "htp://x")
        .env("RUSTLE_MAX_RETRIES", "lots")
        .env("RUSTLE_LISTEN_ADDR", "127.0.0.1:0")
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(r#"RUSTLE_BZZZ_ENDPOINTS: "htp://x" is not an http(s) URL"#),
        "{stderr}"
    );
    assert!(stderr.contains("RUSTLE_MAX_RETRIES"), "{stderr}");
    assert_eq!(stderr.lines().count(), 2, "{stderr}");
}

#[test]
fn an_unusable_journal_stops_hybrid_mode_before_binding() {
    let output = gateway()
        .env("RUSTLE_USE_REAL_CONNECTOR", "true")
        .env("RUSTLE_BZZZ_ENDPOINTS", "http://127.0.0.1:9")
        .env("RUSTLE_LISTEN_ADDR", "127.0.0.1:0")
        .env("RUSTLE_JOURNAL_DIR", "/dev/null/journal")
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(69));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("journal /dev/null/journal"), "{stderr}");
}

#[test]
fn openapi_subcommand_prints_the_committed_document() {
    let output = Command::new(BIN).arg("openapi").output().expect("runs");
    assert!(output.status.success());
    let printed = String::from_utf8(output.stdout).expect("utf-8");
    let committed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/openapi.json"))
            .expect("committed file");
    assert!(
        printed == committed,
        "openapi/openapi.json is stale: run `cargo run -- openapi > openapi/openapi.json`"
    );
}

/// Starts the gateway with `env` on a free port; returns it and its address once it logs
/// "listening" (the readiness signal). Its output keeps being drained.
pub(super) fn spawn_listening(env: &[(&str, &str)]) -> (std::process::Child, String) {
    let mut command = gateway();
    command
        .env("RUSTLE_LISTEN_ADDR", "127.0.0.1:0")
        .env("RUSTLE_LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .stderr(Stdio::inherit());
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command.spawn().expect("spawns");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let Ok(entry) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if entry["fields"]["message"] == "listening"
                && let Some(tx) = tx.take()
            {
                let _ = tx.send(entry["fields"]["addr"].as_str().map(str::to_owned));
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .ok()
        .flatten()
        .expect("the gateway logs its address");
    (child, addr)
}

#[test]
fn serves_then_stops_on_sigterm() {
    let data = tempfile::tempdir().expect("tempdir");
    let data_dir = data.path().display().to_string();
    let (mut child, addr) = spawn_listening(&[("RUSTLE_DATA_DIR", data_dir.as_str())]);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let status = runtime.block_on(async {
        reqwest::get(format!("http://{addr}/health"))
            .await
            .expect("health answers")
            .status()
    });
    assert_eq!(status, 200);
    // The container healthcheck needs nothing in the image but the binary.
    let healthy = gateway()
        .args(["healthcheck"])
        .env("RUSTLE_LISTEN_ADDR", &addr)
        .status()
        .expect("runs");
    assert!(healthy.success());
    let free = super::faults::refused();
    let listen = free.url.trim_start_matches("http://");
    let unhealthy = gateway()
        .args(["healthcheck"])
        .env("RUSTLE_LISTEN_ADDR", listen)
        .stderr(Stdio::null())
        .status()
        .expect("runs");
    assert_eq!(unhealthy.code(), Some(1), "nothing listens there");
    assert_eq!(terminate(&mut child).code(), Some(0));
}

/// A gateway process that is killed when the test ends, passed or not.
pub(super) struct Reaped(pub(super) std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// [`spawn_listening`], killed when dropped.
pub(super) fn spawn_reaped(env: &[(&str, &str)]) -> (Reaped, String) {
    let (child, addr) = spawn_listening(env);
    (Reaped(child), addr)
}

/// Sends SIGTERM and waits for the exit.
pub(super) fn terminate(child: &mut std::process::Child) -> std::process::ExitStatus {
    let pid = child.id().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill runs");
    assert!(killed.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(exit) = child.try_wait().expect("waits") {
            return exit;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the gateway did not stop"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What the embedded default holds at `address` (status, latest, history ids), and where its
/// local store keeps its data.
async fn embedded_view(
    client: &reqwest::Client,
    addr: &str,
    address: &str,
) -> (
    u16,
    serde_json::Value,
    Vec<serde_json::Value>,
    serde_json::Value,
) {
    use super::helpers::enc;
    use super::nodes::body;
    let (status, latest) = body(
        client
            .get(format!(
                "http://{addr}/v1/envelopes?address={}",
                enc(address)
            ))
            .send()
            .await,
    )
    .await;
    let (_, history) = body(
        client
            .get(format!(
                "http://{addr}/v1/envelopes/history?address={}",
                enc(address)
            ))
            .send()
            .await,
    )
    .await;
    let ids = history["response"]["data"]["versions"]
        .as_array()
        .map(|v| v.iter().map(|v| v["id"].clone()).collect())
        .unwrap_or_default();
    let (_, status_doc) = body(client.get(format!("http://{addr}/v1/status")).send().await).await;
    (
        status,
        latest["response"]["data"].clone(),
        ids,
        status_doc["response"]["data"]["local_store"]["storage"].clone(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_default_keeps_acknowledged_writes_across_sigkill_and_sigterm() {
    use super::helpers::enc;
    use super::nodes::body;
    let data = tempfile::tempdir().expect("tempdir");
    let data_dir = data.path().display().to_string();
    // Nothing but the data directory configured: the embedded default.
    let env = [("RUSTLE_DATA_DIR", data_dir.as_str())];
    let (mut first, addr) = spawn_reaped(&env);
    let client = reqwest::Client::new();
    let kept = "ucxl://agent:dev@proj:task/notes/kept";
    let gone = "ucxl://any:any@BZZZ:RUSTLE-testing/shared/gone";
    let url =
        |addr: &str, address: &str| format!("http://{addr}/v1/envelopes?address={}", enc(address));
    for n in 1..=3 {
        let (status, answer) = body(
            client
                .put(url(&addr, kept))
                .json(&serde_json::json!({"content": {"n": n}}))
                .send()
                .await,
        )
        .await;
        assert_eq!(status, 201, "{answer}");
    }
    // The same write each time: a retry after the delete must stay a no-op.
    let put_gone = |addr: &str| {
        client
            .put(url(addr, gone))
            .header("Idempotency-Key", "gone-1")
            .json(&serde_json::json!({"content": "soon deleted"}))
            .send()
    };
    let (status, _) = body(put_gone(&addr).await).await;
    assert_eq!(status, 201);
    let (status, _) = body(client.delete(url(&addr, gone)).send().await).await;
    assert_eq!(status, 200);
    let before = embedded_view(&client, &addr, kept).await;
    assert_eq!(before.0, 200);
    assert_eq!(before.1["version"], 3);
    assert_eq!(before.2.len(), 3);
    assert_eq!(before.3, "disk", "the status says where the data is kept");

    // SIGKILL: no shutdown, no flush.
    first.0.kill().expect("killed");
    first.0.wait().expect("reaped");
    let (mut second, addr) = spawn_reaped(&env);
    assert_eq!(
        embedded_view(&client, &addr, kept).await,
        before,
        "a SIGKILL loses nothing acknowledged"
    );
    let (status, _) = body(client.get(url(&addr, gone)).send().await).await;
    assert_eq!(status, 404, "the delete was kept too");
    // A late retry of the deleted write stays a no-op after the restart.
    let (status, answer) = body(put_gone(&addr).await).await;
    assert_eq!(status, 200, "{answer}");
    let (status, _) = body(client.get(url(&addr, gone)).send().await).await;
    assert_eq!(status, 404, "deleted content does not come back");

    // A graceful stop, then a start: still there.
    assert_eq!(terminate(&mut second.0).code(), Some(0));
    let (mut third, addr) = spawn_reaped(&env);
    assert_eq!(embedded_view(&client, &addr, kept).await, before);
    assert_eq!(terminate(&mut third.0).code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_in_memory_says_so_and_forgets_on_restart() {
    use super::nodes::body;
    let data = tempfile::tempdir().expect("tempdir");
    let data_dir = data.path().display().to_string();
    let env = [
        ("RUSTLE_DATA_DIR", data_dir.as_str()),
        ("RUSTLE_LOCAL_STORE", "memory"),
    ];
    let address = "ucxl://agent:dev@proj:task/notes/throwaway";
    let client = reqwest::Client::new();
    let (mut first, addr) = spawn_reaped(&env);
    let (status, _) = body(
        client
            .put(format!(
                "http://{addr}/v1/envelopes?address={}",
                super::helpers::enc(address)
            ))
            .json(&serde_json::json!({"content": 1}))
            .send()
            .await,
    )
    .await;
    assert_eq!(status, 201);
    let view = embedded_view(&client, &addr, address).await;
    assert_eq!((view.0, view.3), (200, serde_json::json!("memory")));
    assert_eq!(terminate(&mut first.0).code(), Some(0));
    let (mut second, addr) = spawn_reaped(&env);
    assert_eq!(embedded_view(&client, &addr, address).await.0, 404);
    assert!(
        !data.path().join("local-store.redb").exists(),
        "nothing is written to disk"
    );
    assert_eq!(terminate(&mut second.0).code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_journal_survives_sigkill_and_reaches_the_cluster_after_restart() {
    use super::faults::refused;
    use super::helpers::enc;
    use super::nodes::{NodeProc, body, wait_until};

    let node = NodeProc::start("solo", &[], None, &[]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = dir.path().display().to_string();
    let refused = refused();
    let down = refused.url.clone();
    let hybrid = [
        ("RUSTLE_BACKEND_MODE", "hybrid"),
        ("RUSTLE_JOURNAL_DIR", journal.as_str()),
        ("RUSTLE_HEALTH_INTERVAL_MS", "50"),
    ];
    let mut env = hybrid.to_vec();
    env.push(("RUSTLE_BZZZ_ENDPOINTS", down.as_str()));
    let (mut first, addr) = spawn_reaped(&env);
    let client = reqwest::Client::new();
    let address = "ucxl://agent:tester@bzzz:crash/notes/n";
    let mut acknowledged = Vec::new();
    for i in 0..5 {
        let (status, answer) = body(
            client
                .put(format!(
                    "http://{addr}/v1/envelopes?address={}",
                    enc(address)
                ))
                .json(&serde_json::json!({"content": {"n": i}}))
                .send()
                .await,
        )
        .await;
        assert_eq!(status, 202, "{answer}");
        acknowledged.push(answer["response"]["data"]["id"].clone());
    }
    // SIGKILL: no shutdown, no flush.
    first.0.kill().expect("killed");
    first.0.wait().expect("reaped");

    let node_url = node.url("");
    let mut env = hybrid.to_vec();
    env.push(("RUSTLE_BZZZ_ENDPOINTS", node_url.as_str()));
    let (mut second, addr) = spawn_reaped(&env);
    let status_url = format!("http://{addr}/v1/status");
    let replayed = wait_until(Duration::from_secs(20), || async {
        let (_, s) = body(client.get(&status_url).send().await).await;
        s["response"]["data"]["journal"]["pending"] == 0
            && s["response"]["data"]["fallback"]["active"] == false
    })
    .await;
    assert!(
        replayed,
        "{}",
        body(client.get(&status_url).send().await).await.1
    );
    // Every acknowledged write is on the node, in order, under its id.
    let (status, history) = body(
        client
            .get(node.url(&format!("/ucxi/v1/history?address={}", enc(address))))
            .send()
            .await,
    )
    .await;
    assert_eq!(status, 200, "{history}");
    let ids: Vec<serde_json::Value> = history["response"]["data"]["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .map(|v| v["id"].clone())
        .collect();
    assert_eq!(ids, acknowledged);
    second.0.kill().expect("killed");
    let _ = second.0.wait();
}
