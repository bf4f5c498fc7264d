//! The `rustle-gateway` binary: parse the command line, load configuration (exit 64 on
//! any problem, before binding), install logging, serve until SIGTERM/SIGINT.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use rustle_gateway::config::{AuthCommand, Cli, Command, EXIT_CONFIG, SETTINGS, Sources};
use rustle_gateway::startup::{Application, Options, StartupError};
use rustle_gateway::{openapi, telemetry};
use tokio_util::sync::CancellationToken;

/// mimalloc: a request allocates and frees a few hundred small blocks; glibc's malloc
/// spent a fifth of the read path's instructions on them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `EX_UNAVAILABLE`: the listener could not bind.
const EXIT_UNAVAILABLE: u8 = 69;

fn environment() -> HashMap<String, String> {
    std::env::vars_os()
        .map(|(k, v)| {
            (
                k.to_string_lossy().into_owned(),
                v.to_string_lossy().into_owned(),
            )
        })
        .collect()
}

fn config_error(problems: &[String]) -> ExitCode {
    for p in problems {
        eprintln!("configuration error: {p}");
    }
    ExitCode::from(EXIT_CONFIG)
}

/// `rustle-gateway auth new-key NAME`.
fn new_key(name: &str) -> ExitCode {
    let name = match ucxl::PrincipalName::parse(name) {
        Ok(n) => n,
        Err(e) => return config_error(&[format!("NAME {name:?}: {e}")]),
    };
    match rustle_gateway::auth::new_key() {
        Ok(key) => {
            print!("{}", rustle_gateway::auth::new_key_text(&name, &key));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("no randomness available for a key: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Openapi) => {
            return match openapi::document_json() {
                Ok(json) => {
                    print!("{json}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("cannot render the OpenAPI document: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Some(Command::Auth(AuthCommand::NewKey { name })) => return new_key(&name),
        Some(Command::Settings) => {
            println!(
                "{:<30} {:<38} {:<16} meaning",
                "key", "environment", "default"
            );
            for s in SETTINGS {
                println!(
                    "{:<30} {:<38} {:<16} {}",
                    s.key,
                    s.env,
                    s.default.unwrap_or("-"),
                    s.help
                );
            }
            return ExitCode::SUCCESS;
        }
        _ => {}
    }
    let sources = match Sources::load(cli.clone(), environment()) {
        Ok(s) => s,
        Err(p) => return config_error(&p.0),
    };
    let config = match sources.resolve() {
        Ok(c) => c,
        Err(p) => return config_error(&p.0),
    };
    let otlp = match ucxl_service::otlp::Settings::from_env(&environment(), "rustle-gateway") {
        Ok(o) => o,
        Err(p) => return config_error(&p),
    };
    if let Some(Command::Healthcheck) = cli.command {
        return if ucxl_service::lifecycle::probe(
            config.listen_addr,
            "/ready",
            config.tls_cert.is_some(),
        ) {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    if let Some(Command::CheckConfig) = cli.command {
        return match serde_json::to_string_pretty(&config) {
            Ok(json) => {
                println!("{json}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("cannot print the configuration: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let log_reload = telemetry::init(config.log_format, &config.log_filter);
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
    let exit = runtime.block_on(serve(cli, config, log_reload));
    // The spans of the last requests go out before the process ends.
    if let Some(exporter) = exporter {
        exporter.shutdown();
    }
    exit
}

async fn serve(
    cli: Cli,
    config: rustle_gateway::config::Config,
    log_reload: Option<rustle_gateway::state::LogReload>,
) -> ExitCode {
    let options = Options {
        cli,
        env: Arc::new(environment),
        log_reload,
    };
    let app = match Application::build(config, options).await {
        Ok(app) => app,
        Err(e @ (StartupError::Mode(_) | StartupError::Tls(_))) => {
            return config_error(&[e.to_string()]);
        }
        Err(StartupError::Policy(problems)) => return config_error(&problems),
        Err(e @ (StartupError::Bind { .. } | StartupError::Environment(_))) => {
            tracing::error!(error = %e, "cannot start");
            eprintln!("{e}");
            return ExitCode::from(EXIT_UNAVAILABLE);
        }
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(ucxl_service::lifecycle::stop_on_signal(shutdown.clone()));
    match app.run_until_stopped(shutdown).await {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = %e, "server failed");
            ExitCode::FAILURE
        }
    }
}
