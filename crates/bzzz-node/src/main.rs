//! The `bzzz-node` binary: configuration from the environment (exit 64 on any problem),
//! JSON or pretty logs, serve until SIGTERM/SIGINT.

use std::collections::HashMap;
use std::process::ExitCode;

use bzzz_node::config::{EXIT_CONFIG, NodeConfig};
use bzzz_node::node::Node;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let env: HashMap<String, String> = std::env::vars_os()
        .map(|(k, v)| {
            (
                k.to_string_lossy().into_owned(),
                v.to_string_lossy().into_owned(),
            )
        })
        .collect();
    if std::env::args()
        .nth(1)
        .is_some_and(|a| a == "--help" || a == "-h")
    {
        println!(
            "bzzz-node [healthcheck]: configured by BZZZ_HTTP_ADDR, BZZZ_P2P_ADDR, BZZZ_BOOTSTRAP_PEERS, BZZZ_DATA_DIR, BZZZ_REPLICATION_FACTOR, BZZZ_NODE_NAME, BZZZ_MAX_BODY_BYTES, BZZZ_MAX_RECORD_BYTES, BZZZ_REQUEST_TIMEOUT_MS, BZZZ_LOG_FORMAT, BZZZ_API_TOKEN (bearer token for every route but /health and /metrics), BZZZ_SWARM_KEY or BZZZ_SWARM_KEY_FILE (pre-shared key of a private libp2p network; 64 hex characters or a swarm.key file), BZZZ_TLS_CERT and BZZZ_TLS_KEY (serve HTTPS; SIGHUP re-reads them), BZZZ_TLS_CLIENT_CA (require client certificates it signed), RUST_LOG (see the README), OTEL_EXPORTER_OTLP_ENDPOINT (export spans over OTLP/HTTP; see the README)"
        );
        return ExitCode::SUCCESS;
    }
    let config = match NodeConfig::from_env(&env) {
        Ok(c) => c,
        Err(problems) => {
            for p in problems {
                eprintln!("configuration error: {p}");
            }
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if std::env::args().nth(1).is_some_and(|a| a == "healthcheck") {
        // A container healthcheck: this host's node answers /health with 200.
        return if ucxl_service::lifecycle::probe(config.http_addr, "/health", config.tls.is_some())
        {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    let otlp = match ucxl_service::otlp::Settings::from_env(&env, "bzzz-node") {
        Ok(o) => o,
        Err(problems) => {
            for p in problems {
                eprintln!("configuration error: {p}");
            }
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let installed = if config.log_json {
        tracing_subscriber::fmt()
            .json()
            .fmt_fields(ucxl_service::log_fields::JsonSpanFields)
            .with_env_filter(filter)
            .try_init()
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).try_init()
    };
    if let Err(e) = installed {
        eprintln!("cannot install logging: {e}");
    }
    let exporter = match otlp.as_ref().map(ucxl_service::otlp::install).transpose() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let exit = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        let node = match Node::start(&config, shutdown.clone()).await {
            Ok(node) => node,
            Err(e) => {
                tracing::error!(error = %e, "cannot start");
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        };
        tokio::spawn(ucxl_service::lifecycle::stop_on_signal(shutdown));
        match node.run_until_stopped().await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "server failed");
                ExitCode::FAILURE
            }
        }
    });
    // The spans of the last requests go out before the process ends.
    if let Some(exporter) = exporter {
        exporter.shutdown();
    }
    exit
}
