//! The command line: flags for the most used settings, `--set KEY=VALUE` for any other,
//! and the subcommands besides serving.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Command-line interface. Every setting can also be given with `--set key=value`.
#[derive(Debug, Clone, Default, Parser)]
#[command(
    name = "rustle-gateway",
    version,
    about = "RUSTLE Gateway: one reliable REST service in front of a BZZZ cluster"
)]
pub struct Cli {
    /// TOML config file (keys as listed by `rustle-gateway settings`) [env: `RUSTLE_CONFIG`]
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on [env: `RUSTLE_LISTEN_ADDR`] [default: 127.0.0.1:8080]
    #[arg(long, value_name = "HOST:PORT")]
    pub listen_addr: Option<String>,
    /// mock, real or hybrid [env: `RUSTLE_BACKEND_MODE`]
    #[arg(long, value_name = "MODE")]
    pub backend_mode: Option<String>,
    /// Comma-separated BZZZ node URLs [env: `RUSTLE_BZZZ_ENDPOINTS`]
    #[arg(long, value_name = "URLS")]
    pub bzzz_endpoints: Option<String>,
    /// json or pretty [env: `RUSTLE_LOG_FORMAT`] [default: json]
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<String>,
    /// Any other setting, as KEY=VALUE (repeatable); see `rustle-gateway settings`
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// What to do (default: serve).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands besides serving.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Serve the API (the default).
    Serve,
    /// Print the `OpenAPI` document and exit.
    Openapi,
    /// Validate the configuration, print the effective values and exit.
    CheckConfig,
    /// List every setting with its environment variable and default.
    Settings,
    /// Exit 0 when the gateway on this host answers `/ready` (a container healthcheck).
    Healthcheck,
    /// API keys for the policy file.
    #[command(subcommand)]
    Auth(AuthCommand),
}

/// `rustle-gateway auth ...`.
#[derive(Debug, Clone, Subcommand)]
pub enum AuthCommand {
    /// Print a fresh API key for principal NAME and the policy lines to paste (which hold
    /// only the key's SHA-256).
    NewKey {
        /// The principal's name (1..=128 printable ASCII characters).
        name: String,
    },
}
