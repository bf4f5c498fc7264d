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
    let (mut child, addr) = spawn_listening(&[]);
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
    let pid = child.id().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill runs");
    assert!(killed.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let exit = loop {
        if let Some(exit) = child.try_wait().expect("waits") {
            break exit;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the gateway did not stop"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(exit.code(), Some(0));
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
    let (mut first, addr) = spawn_listening(&env);
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
    first.kill().expect("killed");
    first.wait().expect("reaped");

    let node_url = node.url("");
    let mut env = hybrid.to_vec();
    env.push(("RUSTLE_BZZZ_ENDPOINTS", node_url.as_str()));
    let (mut second, addr) = spawn_listening(&env);
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
    second.kill().expect("killed");
    let _ = second.wait();
}
