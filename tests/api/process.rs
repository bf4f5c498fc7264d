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

#[test]
fn serves_then_stops_on_sigterm() {
    let mut child = gateway()
        .env("RUSTLE_LISTEN_ADDR", "127.0.0.1:0")
        .env("RUSTLE_LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .spawn()
        .expect("spawns");
    let stdout = child.stdout.take().expect("stdout");
    // The "listening" log line carries the bound address: that is the readiness signal.
    let mut addr = None;
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("a log line");
        let Ok(entry) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if entry["fields"]["message"] == "listening" {
            addr = entry["fields"]["addr"].as_str().map(str::to_owned);
            break;
        }
    }
    let addr = addr.expect("the gateway logs its address");
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
