//! The command line.

use std::path::PathBuf;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "companies-gateway",
    version,
    about = "A validating reverse proxy in front of the Companies API"
)]
pub struct Cli {
    /// The configuration file.
    #[arg(long, env = "GATEWAY_CONFIG", default_value = "config.toml")]
    pub config: PathBuf,

    /// Load and validate the configuration, print it with secrets masked, and exit.
    #[arg(long)]
    pub check_config: bool,
}
