#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use companies_gateway::cli::Cli;
use companies_gateway::{preflight, telemetry};
use mimalloc::MiMalloc;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The same load as --check-config: the config and every file it names.
    let loaded = match preflight::load(&cli.config) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("companies-gateway: config error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (config, report) = (loaded.config, loaded.report);
    if cli.check_config {
        print!("{}{}", config.to_masked_toml(), report.summary);
        for warning in report.warnings {
            eprintln!("companies-gateway: warning: {warning}");
        }
        return ExitCode::SUCCESS;
    }
    let (level_from, log_level) = match telemetry::init(&config.log) {
        Ok(init) => init,
        Err(e) => {
            eprintln!("companies-gateway: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(log_level_from = ?level_from, "companies-gateway starting");
    for warning in report.warnings {
        tracing::warn!("{warning}");
    }
    match companies_gateway::run(config, &cli.config, Some(log_level)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "companies-gateway stopped");
            eprintln!("companies-gateway: {e}");
            ExitCode::FAILURE
        }
    }
}
